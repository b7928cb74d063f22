"""The worker-side generation loop for GGUF models: every sequence's next token, plus a newcomer's prompt chunk, in one
llama_decode; Hearth's own samplers on llama.cpp's logits.

One llama.cpp context with a unified KV cache (one pool of ctx_size cells) holds every sequence, each under its own
llama.cpp sequence id (a "slot"). A finished sequence's cells are kept under its slot as a prefix (up to
KEPT_PREFIXES of them), and a new prompt that starts the same way shares them (llama_memory_seq_cp tags the same
cells with the new slot: no copy). The last slot is scratch space for scoring prompts (echo logprobs, logits).
"""
from __future__ import annotations

import logging
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from modules.errors import GenerationFailed
from modules.generation import SamplingParams, TokenLogprob
from modules.loaders.base import ModelInfo, SequenceSpec, TokenEvent
from modules.loaders.batch_sampling import choose_tokens
from modules.loaders.cpu_share import ThreadGovernor
from modules.loaders.kv_batch import Row
from modules.loaders.sampling import apply_bias_and_bans, apply_penalties, filter_logits, top_logprobs

log = logging.getLogger(__name__)

DEFAULT_PREFILL_CHUNK = 512
KEPT_PREFIXES = 8  # finished sequences whose cells stay for a prompt that starts the same way
NO_ROOM = 1  # llama_decode: no room in the KV cache for this batch (nothing was changed)
CACHE_FULL = "the llama.cpp KV cache (ctx_size {} tokens, shared by every running sequence) is full"


def batch_tokens(options: Mapping[str, Any]) -> int:
    """Tokens one llama_decode may carry: a prompt chunk plus one token per decoding sequence."""
    return int(options.get("prefill_chunk") or DEFAULT_PREFILL_CHUNK) + _max_batch(options)


def sequence_slots(options: Mapping[str, Any]) -> int:
    """llama.cpp sequence ids to allocate: running sequences (an n-choice request may bring more than
    max_batch_size at once), kept prefixes, and the scratch slot."""
    return 2 * _max_batch(options) + KEPT_PREFIXES + 1


def _max_batch(options: Mapping[str, Any]) -> int:
    return int(options.get("max_batch_size") or 1)


@dataclass
class Feed:
    """Tokens of one sequence in the next llama_decode: row.tokens[start : start + count] at those positions."""

    row: Row
    slot: int
    start: int
    count: int
    logits: bool  # the last token's logits are wanted (a decode step, or the last chunk of a prompt)
    every: bool = False  # every token's logits are wanted (scoring a prompt)
    index: int = -1  # the first wanted token's place in the batch, for llama_get_logits_ith


class LlamaCppEngine:
    """Owns the llama.cpp context's compute: every method but the constructor runs on the scheduler's worker."""

    def __init__(self, lib, ctx, info: ModelInfo, options: Mapping[str, Any]):
        self.lib, self.ctx, self.info = lib, ctx, info
        self.memory = lib.llama_get_memory(ctx)
        self.max_batch = _max_batch(options)
        self.chunk = int(options.get("prefill_chunk") or DEFAULT_PREFILL_CHUNK)
        self.n_batch = lib.llama_n_batch(ctx)
        self.n_ctx = lib.llama_n_ctx(ctx)
        slots = lib.llama_n_seq_max(ctx)
        self.scratch = slots - 1
        self.keep_prefixes = KEPT_PREFIXES if options.get("prefix_cache_mb", 1) else 0
        self.free = list(range(self.scratch))  # slots no sequence or kept prefix holds
        self.rows: dict[int, Row] = {}  # by Hearth's seq_id
        self.slot_of: dict[int, int] = {}
        self.waiting: deque[int] = deque()  # seq_ids still prefilling, oldest first
        self.prefixes: OrderedDict[int, tuple[int, ...]] = OrderedDict()  # slot -> its tokens; least recent first
        self.failed: list[TokenEvent] = []  # sequences refused at start(), reported by the next step()
        self.held_back = False  # a newcomer found no room: no prefill is tried until some cells are freed
        self.closed = False
        self.reused_tokens = 0  # prompt tokens served from kept prefixes (for stats and tests)
        self.batch = lib.llama_batch_init(self.n_batch, 0, 1)
        # numpy views of the batch's arrays [n_batch], so a prompt chunk is written in a few slice assignments
        self._token = np.ctypeslib.as_array(self.batch.token, shape=(self.n_batch,))
        self._pos = np.ctypeslib.as_array(self.batch.pos, shape=(self.n_batch,))
        self._n_seq = np.ctypeslib.as_array(self.batch.n_seq_id, shape=(self.n_batch,))
        self._want = np.ctypeslib.as_array(self.batch.logits, shape=(self.n_batch,))
        self._seq = [self.batch.seq_id[i] for i in range(self.n_batch)]
        self._threads = lib.llama_n_threads(ctx)
        self._adapt = bool(options.get("adapt_threads", True))
        self._prepared = False
        self.governor: ThreadGovernor | None = None

    def prepare(self) -> None:
        """On the worker thread, once: the thread governor names this thread so that llama.cpp's OpenMP threads
        (started by it) count as ours, and sets llama.cpp's thread count from the cores other work leaves free."""
        if self._prepared:
            return
        self._prepared = True
        if self._adapt and ThreadGovernor.for_this_machine(self._threads) is not None:
            self.governor = ThreadGovernor(self._threads, apply=self._set_threads)
            self.governor.start()

    def _set_threads(self, count: int) -> None:
        self.lib.llama_set_n_threads(self.ctx, count, count)

    def start(self, spec: SequenceSpec) -> None:
        """Give a sequence a slot, sharing the cells of the longest kept prefix of its prompt."""
        slot = self._take_slot()
        if slot is None:
            self.failed.append(TokenEvent(spec.seq_id, -1, error="too many sequences at once for llama.cpp's slots"))
            return
        generator = torch.Generator()
        generator.manual_seed(spec.seed % (2**64))
        row = Row(spec=spec, generator=generator, tokens=list(spec.prompt_ids))
        self.rows[spec.seq_id], self.slot_of[spec.seq_id] = row, slot
        self.waiting.append(spec.seq_id)
        source, shared = self._longest_prefix(row.tokens)
        if shared:
            self.lib.llama_memory_seq_cp(self.memory, source, slot, 0, shared)  # positions [0, shared)
            self.prefixes.move_to_end(source)
            row.cached = shared
            self.reused_tokens += shared

    def active(self) -> int:
        """Sequences prefilling or decoding."""
        return len(self.rows) + len(self.failed)

    def step(self) -> list[TokenEvent]:
        """One llama_decode: the next token of every decoding row and the waiting prompts' next chunk."""
        self.prepare()
        if self.governor is not None:
            self.governor.tune()
        events, self.failed = self.failed, []
        feeds = self._plan()
        if feeds:
            events += self._run(feeds)
        return events

    def release(self, seq_id: int) -> None:
        """Forget a sequence; its computed cells stay as a kept prefix when prefixes are kept."""
        row = self.rows.pop(seq_id, None)
        if row is None:
            self.failed = [e for e in self.failed if e.seq_id != seq_id]
            return
        slot = self.slot_of.pop(seq_id)
        if seq_id in self.waiting:
            self.waiting.remove(seq_id)
        self._retire(slot, tuple(row.tokens[: row.cached]))
        self.held_back = False  # its cells are free, or kept as a prefix that can be evicted for a waiting prompt

    def reset(self) -> None:
        """Drop every sequence and kept prefix (after an error that left the batch in an unknown state)."""
        if self.closed:
            return  # the context is gone (a scheduler shutting down may reset a loader it no longer serves)
        self.lib.llama_memory_clear(self.memory, True)
        self.rows.clear()
        self.slot_of.clear()
        self.waiting.clear()
        self.prefixes.clear()
        self.failed = []
        self.held_back = False
        self.free = list(range(self.scratch))

    def close(self) -> None:
        """Forget all state (the loader frees the context itself)."""
        self.closed = True
        self.rows.clear()
        self.prefixes.clear()
        self.waiting.clear()

    def next_token_probs(self, prompt_ids: Sequence[int], sampling: SamplingParams | None, top: int):
        """Top next-token probabilities after `prompt_ids`, raw or after the sampler settings."""
        self.prepare()
        logits = self._score(list(prompt_ids), every=False)[-1]
        if sampling is not None:
            ids = torch.tensor(list(prompt_ids))
            logits = apply_bias_and_bans(logits, dict(sampling.logit_bias), ())
            logits = apply_penalties(logits, sampling, ids, ids[:0])
            if sampling.temperature > 0:
                logits = filter_logits(logits, sampling)
        probs = torch.softmax(logits, -1)
        values, order = torch.topk(probs, min(top, probs.numel()))
        return [(i, p) for i, p in zip(order.tolist(), values.tolist()) if p > 0]

    def prompt_logprobs(self, prompt_ids: Sequence[int], top: int) -> list[TokenLogprob]:
        """Each prompt token's logprob given those before it, scored as the Transformers loader scores it: on the
        prompt exactly as it is generated from; the first token after BOS alone where the model has a BOS and the
        prompt does not start with it, else 0."""
        self.prepare()
        ids = [int(t) for t in prompt_ids]
        bos = self.info.bos_token_id
        if bos is None or ids[0] == bos:
            items = [TokenLogprob(ids[0], 0.0)]
        else:
            first = torch.log_softmax(self._score([bos], every=False)[-1], -1)
            items = [TokenLogprob(ids[0], float(first[ids[0]]), tuple(top_logprobs(first, top)))]
        if len(ids) > 1:
            rows = torch.log_softmax(self._score(ids[:-1], every=True), -1)  # [T-1, V]
            for row, token in zip(rows, ids[1:]):
                items.append(TokenLogprob(token, float(row[token]), tuple(top_logprobs(row, top))))
        return items

    # ---- planning and decoding ----------------------------------------------------------------------------
    def _plan(self) -> list[Feed]:
        """Decoding rows first (one token each), then waiting prompts' chunks while the batch has room."""
        feeds = [Feed(row, self.slot_of[sid], row.cached, 1, True) for sid, row in self.rows.items() if row.generated]
        if self.held_back and feeds:
            return feeds  # trying again would fail (and log) until a sequence frees its cells
        budget = min(self.chunk, self.n_batch - len(feeds))
        for sid in self.waiting:
            row = self.rows[sid]
            count = min(len(row.tokens) - row.cached, budget)
            if count <= 0:
                break
            feeds.append(Feed(row, self.slot_of[sid], row.cached, count, row.cached + count == len(row.tokens)))
            budget -= count
        return feeds

    def _run(self, feeds: list[Feed]) -> list[TokenEvent]:
        """Decode `feeds`, making room when the KV cache is full; sample the rows whose logits came back."""
        events = []
        while feeds:
            result = self._decode(feeds)
            if result == 0:
                break
            if result != NO_ROOM:
                raise RuntimeError(f"llama_decode failed with code {result}")
            if self._evict_prefix():
                continue  # kept prefixes go first, least recently used first
            if len(feeds) > 1 and not feeds[-1].row.generated:
                feeds = feeds[:-1]  # a newcomer's chunk waits until running sequences free their cells
                self.held_back = True
                continue
            victim = max(feeds, key=lambda f: f.start + f.count)  # alone, or the longest: it cannot go on
            feeds.remove(victim)
            self._drop(victim.row.seq_id)
            events.append(TokenEvent(victim.row.seq_id, -1, error=CACHE_FULL.format(self.n_ctx)))
        for feed in feeds:
            feed.row.cached = feed.start + feed.count
            if feed.logits and not feed.row.generated:
                self.waiting.remove(feed.row.seq_id)  # prefilled: it decodes from the next step on
        sampled = [f for f in feeds if f.logits]
        if sampled:
            logits = torch.from_numpy(np.stack([self._logits(f.index) for f in sampled]))  # [B, V]
            events += choose_tokens([f.row for f in sampled], logits)
        return events

    def _decode(self, feeds: list[Feed]) -> int:
        """Write `feeds` into the batch (one seq_id per token) and run llama_decode; its return code."""
        n = 0
        for feed in feeds:
            end = n + feed.count
            self._token[n:end] = feed.row.tokens[feed.start : feed.start + feed.count]
            self._pos[n:end] = np.arange(feed.start, feed.start + feed.count)
            self._n_seq[n:end] = 1
            self._want[n:end] = 1 if feed.every else 0
            for i in range(n, end):
                self._seq[i][0] = feed.slot
            if feed.logits:
                self._want[end - 1] = 1
            feed.index = n if feed.every else end - 1
            n = end
        self.batch.n_tokens = n
        return self.lib.llama_decode(self.ctx, self.batch)

    def _logits(self, index: int) -> np.ndarray:
        """A copy of the logits [V] of the batch's token `index`."""
        pointer = self.lib.llama_get_logits_ith(self.ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self.info.vocab_size,)).copy()

    def _score(self, ids: list[int], every: bool) -> torch.Tensor:
        """Logits [T, V] of every token of `ids` (or [1, V] of the last) in the scratch slot, which is then cleared."""
        out = []
        try:
            for start in range(0, len(ids), self.n_batch):
                count = min(self.n_batch, len(ids) - start)
                feed = Feed(_Tokens(ids), self.scratch, start, count, start + count == len(ids), every=every)
                while (result := self._decode([feed])) == NO_ROOM:
                    if not self._evict_prefix():
                        raise GenerationFailed(CACHE_FULL.format(self.n_ctx) + ": retry when fewer requests run")
                if result != 0:
                    raise GenerationFailed(f"llama_decode failed with code {result}")
                if every:
                    out += [self._logits(feed.index + k) for k in range(count)]
                elif feed.logits:
                    out.append(self._logits(feed.index))
        finally:
            self.lib.llama_memory_seq_rm(self.memory, self.scratch, -1, -1)
        return torch.from_numpy(np.stack(out))

    # ---- slots and kept prefixes --------------------------------------------------------------------------
    def _take_slot(self) -> int | None:
        if not self.free:
            self._evict_prefix()
        return self.free.pop() if self.free else None

    def _longest_prefix(self, tokens: list[int]) -> tuple[int, int]:
        """(slot, n) of the kept prefix sharing the most leading tokens with `tokens`, n < len(tokens)."""
        best_slot, best = -1, 0
        for slot, kept in self.prefixes.items():
            n = _common_prefix(kept, tokens, len(tokens) - 1)
            if n > best:
                best_slot, best = slot, n
        return best_slot, best

    def _retire(self, slot: int, tokens: tuple[int, ...]) -> None:
        """Keep a finished sequence's cells as a prefix (dropping kept ones it extends), or free them."""
        if not self.keep_prefixes or not tokens:
            self._clear(slot)
            return
        for other, kept in list(self.prefixes.items()):
            if tokens[: len(kept)] == kept:
                self._clear(other)  # everything it held, this one holds too
        self.prefixes[slot] = tokens
        while len(self.prefixes) > self.keep_prefixes:
            self._evict_prefix()

    def _evict_prefix(self) -> bool:
        """Free the least recently used kept prefix; False if none is kept."""
        if not self.prefixes:
            return False
        self._clear(next(iter(self.prefixes)))
        return True

    def _drop(self, seq_id: int) -> None:
        """Remove a failed sequence and free its cells (the scheduler does not release failed sequences)."""
        self.rows.pop(seq_id)
        if seq_id in self.waiting:
            self.waiting.remove(seq_id)
        self._clear(self.slot_of.pop(seq_id))

    def _clear(self, slot: int) -> None:
        self.held_back = False  # cells were freed: waiting prompts may fit now
        self.lib.llama_memory_seq_rm(self.memory, slot, -1, -1)
        self.prefixes.pop(slot, None)
        self.free.append(slot)


@dataclass
class _Tokens:
    """Stands in for a Row when scoring: Feed only reads `tokens`."""

    tokens: list[int]
    generated: tuple = ()


def _common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y or n >= limit:
            break
        n += 1
    return n
