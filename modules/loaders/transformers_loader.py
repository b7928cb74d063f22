"""Transformers loader: AutoModelForCausalLM + AutoTokenizer from a local folder, decoded in a KV batch."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

from modules.errors import ModelLoadError
from modules.loaders.base import Capabilities, ModelInfo, SequenceSpec, TokenEvent
from modules.loaders.hf_files import check_model_folder, read_config
from modules.loaders.tokenizer import HFTokenizer

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "float16", "bfloat16")
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx")


class TransformersLoader:
    """A Hugging Face causal LM; start/step/release are called from the scheduler worker only."""

    name: ClassVar[str] = "transformers"

    def __init__(self, model, tokenizer: HFTokenizer, info: ModelInfo, options: Mapping[str, Any]):
        from modules.loaders.hf_engine import HFEngine

        self.tokenizer = tokenizer
        self.info = info
        max_batch = int(options.get("max_batch_size") or 1)
        self.capabilities = Capabilities(max_batch=max_batch, logits=True, prefix_cache=True, constraints=True)
        self.engine = HFEngine(model, info, options)
        self._grammars = None  # a GrammarCompiler, made on the first constrained request

    @classmethod
    def load(cls, path: Path, name: str, options: Mapping[str, Any]) -> "TransformersLoader":
        """Load weights and tokenizer; ModelLoadError names the cause of any failure."""
        check_model_folder(path)
        config = read_config(path)
        device, dtype = _device_and_dtype(options)
        _set_threads(options)
        tokenizer = HFTokenizer.load(path, trust_remote_code=bool(options.get("trust_remote_code")))
        model = _load_model(path, device, dtype, options)
        info = _model_info(name, path, model, tokenizer, config, str(device), str(dtype).replace("torch.", ""))
        log.info(
            "Loaded %s: %.1fM parameters on %s in %s, context %d",
            name, info.parameters / 1e6, info.device, info.dtype, info.context_length,
        )
        return cls(model, tokenizer, info, options)

    # Tokenizer side: thread-safe, called from request threads.
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Tokenize; BOS/EOS are added only when asked (chat templates render their own)."""
        return self.tokenizer.encode(text, add_special_tokens)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Detokenize."""
        return self.tokenizer.decode(ids, skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for."""
        return self.tokenizer.token_bytes(token_id)

    def compile_grammar(self, grammar):
        """A Grammar compiled for this model's tokenizer (cached); InvalidParameter if it cannot be enforced."""
        if self._grammars is None:
            from modules.constraints.compiler import GrammarCompiler

            self._grammars = GrammarCompiler(self.tokenizer.hf, self.info.vocab_size, self.info.eos_token_ids)
        return self._grammars.compile(grammar)

    # Model side: scheduler worker only.
    def start(self, spec: SequenceSpec) -> None:
        """Admit a sequence (prefilled during the next steps)."""
        self.engine.start(spec)

    def prepare(self) -> None:
        """Pack 16-bit CPU weights on the worker thread (see HFEngine.prepare)."""
        self.engine.prepare()

    def step(self) -> list[TokenEvent]:
        """One prefill chunk for a newcomer and one decode step for the batch."""
        return self.engine.step()

    def release(self, seq_id: int) -> None:
        """Drop a finished or cancelled sequence."""
        self.engine.release(seq_id)

    def active(self) -> int:
        """Admitted sequences (prefilling or decoding)."""
        return self.engine.active()

    def reset(self) -> None:
        """Drop every sequence."""
        self.engine.reset()

    def next_token_probs(self, prompt_ids, sampling, top: int) -> list[tuple[int, float]]:
        """Top next-token (id, probability) pairs after the prompt."""
        return self.engine.next_token_probs(prompt_ids, sampling, top)

    def prompt_logprobs(self, prompt_ids, top: int):
        """Per-token logprobs of a prompt (for completions' echo)."""
        return self.engine.prompt_logprobs(prompt_ids, top)

    def unload(self) -> None:
        """Free weights and caches."""
        self.engine.close()
        self.engine = None
        _free_accelerator_memory()


def _device_and_dtype(options: Mapping[str, Any]):
    import torch

    dtype_name = options.get("dtype") or "auto"
    if dtype_name not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype_name!r} (choose from {', '.join(DTYPES)})")
    use_cuda = torch.cuda.is_available() and not options.get("cpu")
    device = "cuda" if use_cuda else "cpu"
    if dtype_name == "auto":
        if not use_cuda:
            return device, torch.float32
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return device, getattr(torch, dtype_name)


def _set_threads(options: Mapping[str, Any]) -> None:
    import torch

    # Torch's intra-op pool and request threads fight over few cores: fix the count deliberately.
    threads = int(options.get("threads") or 0) or max(1, os.cpu_count() or 1)
    torch.set_num_threads(threads)


def _load_model(path: Path, device: str, dtype, options: Mapping[str, Any]):
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": dtype, "trust_remote_code": bool(options.get("trust_remote_code"))}
    if device == "cuda":
        kwargs["device_map"] = options.get("device_map") or "auto"  # spreads across GPUs via accelerate
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as exc:  # transformers raises many kinds; the message is what the user needs
        raise ModelLoadError(f"{path.name}: could not load the model ({type(exc).__name__}: {exc})") from exc
    model.eval()
    return model


def _model_info(name, path, model, tokenizer: HFTokenizer, config: dict, device: str, dtype: str) -> ModelInfo:
    gen = model.generation_config
    eos = gen.eos_token_id if gen is not None else None
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
        eos_ids.append(tokenizer.eos_token_id)
    return ModelInfo(
        name=name,
        path=path,
        loader=TransformersLoader.name,
        context_length=_context_length(config, tokenizer),
        vocab_size=int(model.get_output_embeddings().weight.shape[0]),
        eos_token_ids=tuple(eos_ids),
        bos_token=tokenizer.bos_token or "",
        bos_token_id=tokenizer.bos_token_id,
        eos_token=tokenizer.eos_token or "",
        chat_template=tokenizer.chat_template,
        generation_defaults=_generation_defaults(gen),
        device=device,
        dtype=dtype,
        parameters=sum(p.numel() for p in model.parameters()),
    )


def _context_length(config: dict, tokenizer: HFTokenizer) -> int:
    text_config = config.get("text_config") or config
    for key in CONTEXT_KEYS:
        value = text_config.get(key) or config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    limit = tokenizer.model_max_length
    return limit if limit and limit < 10**7 else 2048


def _generation_defaults(gen) -> dict:
    # Sampler defaults the model's authors shipped; a request's own values win over them.
    if gen is None:
        return {}
    defaults = {}
    for key in ("temperature", "top_p", "top_k", "min_p", "typical_p", "repetition_penalty"):
        value = getattr(gen, key, None)
        if value is not None:
            defaults[key] = value
    if getattr(gen, "do_sample", None) is False:
        defaults["temperature"] = 0.0  # the authors asked for greedy decoding (None means unsaid)
    return defaults


def _free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
