"""The worker-side generation loop for Hugging Face models: chunked prefill plus batched decode."""
from __future__ import annotations

import inspect
import logging
from collections import deque
from typing import Any, Mapping, Sequence

import torch

from modules.generation import SamplingParams, TokenLogprob
from modules.loaders.base import ModelInfo, SequenceSpec, TokenEvent
from modules.loaders.kv_batch import KVBatch, Row, new_cache, stack_caches
from modules.loaders.llama_decode import LlamaDecodeStep, lean_decoder
from modules.loaders.prefix_cache import PrefixCache
from modules.loaders.batch_sampling import choose_tokens
from modules.loaders.cpu_share import ThreadGovernor
from modules.loaders.sampling import apply_bias_and_bans, apply_penalties, filter_logits, top_logprobs

log = logging.getLogger(__name__)

DEFAULT_PREFILL_CHUNK = 512
DEFAULT_PREFIX_CACHE_MB = 1024


class HFEngine:
    """Owns the model's compute: every method runs on the scheduler's worker thread."""

    def __init__(self, model, info: ModelInfo, options: Mapping[str, Any]):
        self.model = model
        self.info = info
        self.device = model.get_input_embeddings().weight.device
        self.prefill_chunk = int(options.get("prefill_chunk") or DEFAULT_PREFILL_CHUNK)
        self.batch = KVBatch()
        self.prefilling: deque[Row] = deque()
        budget = int(options.get("prefix_cache_mb", DEFAULT_PREFIX_CACHE_MB)) * 1024 * 1024
        self.prefix_cache = PrefixCache(budget) if budget > 0 and _plain_attention(model.config) else None
        self.reused_tokens = 0  # total prompt tokens served from the prefix cache (for stats and tests)
        self._pack = self.device.type == "cpu" and bool(options.get("cpu_prepack", True))
        self._lean = bool(options.get("lean_decode", True))
        self.lean_step: LlamaDecodeStep | None = None  # set by prepare(), after packing (it holds the linears)
        self._adapt = self.device.type == "cpu" and bool(options.get("adapt_threads", True))
        self.governor: ThreadGovernor | None = None  # set by prepare(): threads follow the cores left free
        # transformers 5 renamed forward's past_key_values to cache (the old name warns on every call, then goes)
        self._cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def prepare(self) -> None:
        """Pack CPU linear weights for oneDNN and set up the lean decode step, once, on the calling (worker) thread.

        Measured: weights packed on the main thread ran about 2x slower when a forward ran on another thread
        (same oneDNN kernel and layout), while weights packed on the thread that runs the model were fast."""
        if self._adapt:
            self._adapt = False
            self.governor = ThreadGovernor.for_this_machine(torch.get_num_threads())
            if self.governor is not None:
                self.governor.start()  # before any parallel region here: OpenMP's threads inherit the name
        if self._pack:
            self._pack = False
            from modules.loaders.cpu_packing import pack_linears

            try:
                pack_linears(self.model)
            except RuntimeError as exc:  # a torch build whose oneDNN lacks the op: plain linears still work
                log.warning("could not pack linear weights for oneDNN, running unpacked: %s", exc)
        if self._lean:
            self._lean = False
            self.lean_step = lean_decoder(self.model)

    def _cache_arg(self, cache) -> dict:
        return {self._cache_kw: cache}

    def start(self, spec: SequenceSpec) -> None:
        """Queue a sequence for prefill."""
        generator = torch.Generator(device=self.device)
        generator.manual_seed(spec.seed % (2**64))
        row = Row(spec=spec, generator=generator, tokens=list(spec.prompt_ids))
        if self.prefix_cache is not None:
            reused, kv = self.prefix_cache.lookup(spec.prompt_ids)
            if reused:
                row.cache, row.cached = new_cache(kv), reused
                self.reused_tokens += reused
        self.prefilling.append(row)

    def active(self) -> int:
        """Sequences prefilling or decoding."""
        return len(self.batch) + len(self.prefilling)

    @torch.inference_mode()
    def step(self) -> list[TokenEvent]:
        """Decode one token for every batched row, then prefill: waiting short prompts together, else one chunk."""
        self.prepare()
        if self.governor is not None:
            self.governor.tune()
        events = self._decode() if len(self.batch) else []
        if self.prefilling:
            group = self._waiting_group()
            events.extend(self._prefill_together(group) if len(group) > 1 else self._prefill_chunk())
        return events

    def release(self, seq_id: int) -> None:
        """Forget a sequence wherever it is; keep its keys/values for a later prompt that extends it."""
        index = self.batch.index_of(seq_id)
        if index is None:
            self.prefilling = deque(r for r in self.prefilling if r.seq_id != seq_id)
            return
        if self.prefix_cache is not None:
            row = self.batch.rows[index]
            self.prefix_cache.put(row.tokens[: row.cached], self.batch.row_kv(index))
        self.batch.remove(seq_id)

    def reset(self) -> None:
        """Drop every sequence (after an error that left the batch in an unknown state)."""
        self.batch = KVBatch()
        self.prefilling.clear()
        if self.prefix_cache is not None:
            self.prefix_cache.clear()

    def close(self) -> None:
        """Drop the model and all caches."""
        self.reset()
        self.model = self.lean_step = None  # the lean step holds the model's modules too

    @torch.inference_mode()
    def next_token_probs(
        self, prompt_ids: Sequence[int], sampling: SamplingParams | None, top: int
    ) -> list[tuple[int, float]]:
        """Top next-token probabilities after `prompt_ids`, raw or after the sampler settings."""
        self.prepare()
        ids = torch.tensor([list(prompt_ids)], device=self.device)
        logits = self.model(input_ids=ids, logits_to_keep=1).logits[0, -1].float()
        if sampling is not None:
            logits = apply_bias_and_bans(logits, dict(sampling.logit_bias), ())
            logits = apply_penalties(logits, sampling, ids[0], ids[0][:0])
            if sampling.temperature > 0:
                logits = filter_logits(logits, sampling)
        probs = torch.softmax(logits, -1)
        values, order = torch.topk(probs, min(top, probs.numel()))
        return [(i, p) for i, p in zip(order.tolist(), values.tolist()) if p > 0]

    @torch.inference_mode()
    def prompt_logprobs(self, prompt_ids: Sequence[int], top: int) -> list[TokenLogprob]:
        """Each prompt token's logprob given the tokens before it, with the top alternatives.

        Scored on the prompt exactly as it is generated from (no BOS added), so that echoed logprobs and the
        generated tokens' share one context (lm-evaluation-harness adds them up). The first token has no context:
        it is scored after BOS where the model has one and the prompt does not start with it, else given 0.
        """
        self.prepare()
        ids = torch.tensor([list(prompt_ids)], device=self.device)
        logprobs = torch.log_softmax(self.model(input_ids=ids).logits[0, :-1].float(), -1)  # [T-1, V]
        targets = ids[0, 1:]
        chosen = logprobs.gather(1, targets[:, None])[:, 0].tolist()
        items = [self._first_token_logprob(int(prompt_ids[0]), top)]
        for row, token, value in zip(logprobs, targets.tolist(), chosen):
            items.append(TokenLogprob(int(token), value, tuple(top_logprobs(row, top))))
        return items

    def _first_token_logprob(self, token: int, top: int) -> TokenLogprob:
        bos = self.info.bos_token_id
        if bos is None or token == bos:
            return TokenLogprob(token, 0.0)
        logits = self.model(input_ids=torch.tensor([[bos]], device=self.device)).logits[0, -1]
        row = torch.log_softmax(logits.float(), -1)
        return TokenLogprob(token, float(row[token]), tuple(top_logprobs(row, top)))

    def _decode(self) -> list[TokenEvent]:
        inputs = self.batch.decode_inputs()
        if self.lean_step is not None:
            logits = self.lean_step(**inputs, cache=self.batch.cache)
        else:
            logits = self.model(**inputs, **self._cache_arg(self.batch.cache), use_cache=True).logits[:, -1, :]
        for row in self.batch.rows:
            row.cached += 1
        return choose_tokens(self.batch.rows, logits.float())  # logits: [B, V]

    def _waiting_group(self) -> list[Row]:
        """The oldest newcomers whose uncached prompt tokens fit in one chunk together."""
        group, total = [], 0
        for row in self.prefilling:
            total += len(row.tokens) - row.cached
            if total > self.prefill_chunk:
                break
            group.append(row)
        return group

    def _prefill_together(self, rows: list[Row]) -> list[TokenEvent]:
        """Prefill the rest of several prompts in one forward and merge them into the batch.

        A burst of k clients then costs one forward instead of k, each stalling the running batch. Row i's
        columns: its cached prefix right-aligned in the first P, its new tokens right-aligned in the last N;
        the mask [k, P + N] hides the padding between, positions count real tokens only.
        """
        cache, past_mask = stack_caches([r.cache for r in rows], [r.cached for r in rows])
        new = [r.tokens[r.cached :] for r in rows]
        width = max(len(t) for t in new)
        ids = torch.zeros(len(rows), width, dtype=torch.long)  # [k, N]; pad id 0 is masked out
        new_mask = torch.zeros(len(rows), width, dtype=torch.long)
        positions = torch.zeros(len(rows), width, dtype=torch.long)
        for i, (row, tokens) in enumerate(zip(rows, new)):
            ids[i, width - len(tokens) :] = torch.tensor(tokens)
            new_mask[i, width - len(tokens) :] = 1
            positions[i, width - len(tokens) :] = torch.arange(row.cached, len(row.tokens))
        mask = torch.cat([past_mask.to(self.device), new_mask.to(self.device)], 1)
        try:
            out = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask,
                position_ids=positions.to(self.device),
                **self._cache_arg(cache),
                use_cache=True,
                logits_to_keep=1,
            )
        except (RuntimeError, ValueError, IndexError) as exc:
            for _ in rows:
                self.prefilling.popleft()
            log.warning("prefill of sequences %s failed: %s", [r.seq_id for r in rows], exc)
            return [TokenEvent(r.seq_id, -1, error=f"prefill failed: {exc}") for r in rows]
        for row in rows:
            self.prefilling.popleft()
            row.cache, row.cached = None, len(row.tokens)
        events = choose_tokens(rows, out.logits[:, -1, :].float())
        self.batch.merge(rows, cache, mask)
        return events

    def _prefill_chunk(self) -> list[TokenEvent]:
        row = self.prefilling[0]
        if row.cache is None:
            row.cache = new_cache()
        chunk = row.tokens[row.cached : row.cached + self.prefill_chunk]
        try:
            out = self.model(
                input_ids=torch.tensor([chunk], device=self.device),
                **self._cache_arg(row.cache),
                use_cache=True,
                logits_to_keep=1,
            )
        except (RuntimeError, ValueError, IndexError) as exc:  # e.g. out of memory on a long prompt
            self.prefilling.popleft()
            log.warning("prefill of sequence %d failed: %s", row.seq_id, exc)
            return [TokenEvent(row.seq_id, -1, error=f"prefill failed: {exc}")]
        row.cached += len(chunk)
        if row.cached < len(row.tokens):
            return []  # more chunks to go; the batch decodes in between
        self.prefilling.popleft()
        (event,) = choose_tokens([row], out.logits[:, -1, :].float())
        self.batch.add(row)
        return [event]


def _plain_attention(config) -> bool:
    """True when every layer is full attention, so cached keys/values can be cut and merged freely."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    kinds = set(getattr(text, "layer_types", None) or ["full_attention"])
    return kinds == {"full_attention"} and not getattr(text, "sliding_window", None)
