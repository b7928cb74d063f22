"""llama.cpp loader: a GGUF model through llama-cpp-python's low-level API, decoded in batches by Hearth.

The model, its vocabulary and one llama.cpp context are loaded here; the decode loop lives in llama_cpp_engine.py.
llama_cpp is imported only when a GGUF model is loaded.
"""
from __future__ import annotations

import ctypes
import logging
import os
import threading
import weakref
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

from modules.errors import ModelChanged, ModelLoadError
from modules.loaders.base import Capabilities, ModelInfo, SequenceSpec, TokenEvent
from modules.loaders.gguf_files import model_file

log = logging.getLogger(__name__)

INSTALL = 'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install -r requirements-gguf.txt'
DEFAULT_CONTEXT = 8192  # when ctx_size is 0: the model's trained context, at most this (KV memory grows with it)
FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}  # llama_flash_attn_type
CACHE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8, "bf16": 30}  # ggml_type of the K/V cache
FILE_TYPES = {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 7: "q8_0", 8: "q5_0", 9: "q5_1", 10: "q2_k", 11: "q3_k_s",
              12: "q3_k_m", 13: "q3_k_l", 14: "q4_k_s", 15: "q4_k_m", 16: "q5_k_s", 17: "q5_k_m", 18: "q6_k",
              32: "bf16"}  # fmt: skip  (general.file_type -> a dtype name for ModelInfo)
SAMPLING_KEYS = {"temp": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
                 "penalty_repeat": "repetition_penalty"}  # fmt: skip  (general.sampling.* metadata)
LOAD_MODE_NONE, LOAD_MODE_MMAP, LOAD_MODE_MLOCK, LOAD_MODE_MMAP_MLOCK = 0, 1, 2, 3


def import_llama_cpp():
    """The llama_cpp module; ModelLoadError naming the install command when it is missing or broken."""
    try:
        import llama_cpp
    except (ImportError, OSError, RuntimeError) as exc:  # not installed, or its shared library fails to load
        raise ModelLoadError(f"GGUF models need llama-cpp-python ({type(exc).__name__}: {exc}); install it with: "
                             f"{INSTALL}") from None  # fmt: skip
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's own log: errors only
    return llama_cpp


class GGUFTokenizer:
    """Tokenize and detokenize with the GGUF's own vocabulary, from any thread.

    The vocabulary lives in the llama.cpp model, which unload() frees; a request thread may still hold this loader
    then (it tokenized just before a model swap), so every call takes a lock and, once closed, raises ModelChanged
    (the engine prepares the request again on the new model) instead of reading freed memory."""

    def __init__(self, lib, vocab):
        self.lib = lib
        self.vocab = vocab
        self.size = lib.llama_vocab_n_tokens(vocab)
        self.token_bytes = lru_cache(maxsize=65536)(self._token_bytes)
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """No calls into the vocabulary from now on (it is about to be freed)."""
        with self._lock:
            self._closed = True

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids; special-token text is always recognised, BOS/EOS added (as the GGUF says) only if asked."""
        data = text.encode("utf-8")
        room = len(data) + 4
        while True:
            buf = (self.lib.llama_token * room)()
            with self._open():
                n = self.lib.llama_tokenize(self.vocab, data, len(data), buf, room, add_special_tokens, True)
            if n >= 0:
                return list(buf[:n])
            room = -n  # too small: the count it needs

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids` (ids outside the vocabulary are skipped: llama.cpp would abort on them)."""
        ids = [int(i) for i in ids if 0 <= int(i) < self.size]
        if not ids:
            return ""
        tokens = (self.lib.llama_token * len(ids))(*ids)
        room = len(ids) * 8 + 16
        while True:
            buf = ctypes.create_string_buffer(room)
            with self._open():
                n = self.lib.llama_detokenize(self.vocab, tokens, len(ids), buf, room, False, not skip_special_tokens)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")  # a cut character: U+FFFD, held back by streams
            room = -n

    def text_of(self, token_id: int | None) -> str:
        """A special token's text ("" for none)."""
        if token_id is None:
            return ""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def _token_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < self.size:
            return b""
        room = 64
        while True:
            buf = ctypes.create_string_buffer(room)
            with self._open():
                n = self.lib.llama_token_to_piece(self.vocab, token_id, buf, room, 0, True)
            if n >= 0:
                return buf.raw[:n]
            room = -n

    @contextmanager
    def _open(self):
        with self._lock:
            if self._closed:
                raise ModelChanged("the model was unloaded while this request was prepared; retry")
            yield


class LlamaCppLoader:
    """A GGUF model; start/step/release (and scoring) run on the scheduler worker only."""

    name: ClassVar[str] = "llama.cpp"

    def __init__(self, lib, model, ctx, tokenizer: GGUFTokenizer, info: ModelInfo, options: Mapping[str, Any]):
        from modules.loaders.llama_cpp_engine import LlamaCppEngine

        self.tokenizer = tokenizer
        self.info = info
        self.engine = LlamaCppEngine(lib, ctx, info, options)
        self.capabilities = Capabilities(max_batch=self.engine.max_batch, logits=True,
                                         prefix_cache=self.engine.keep_prefixes > 0)  # fmt: skip
        # Frees the context, then the model, once: at unload() or when this object is collected.
        self._free = weakref.finalize(self, _free_native, lib, model, ctx, self.engine.batch, tokenizer)

    @classmethod
    def load(cls, path: Path, name: str, options: Mapping[str, Any]) -> "LlamaCppLoader":
        """Load the GGUF at `path` (a file or a folder holding one); ModelLoadError names the cause of any failure."""
        file = model_file(path)
        lib = import_llama_cpp()
        lib.llama_backend_init()
        model = lib.llama_model_load_from_file(str(file).encode(), _model_params(lib, options))
        if not model:
            raise ModelLoadError(f"{file.name}: llama.cpp could not load this GGUF file (truncated or corrupt? "
                                 "its reason is in the log above)")  # fmt: skip
        tokenizer = GGUFTokenizer(lib, lib.llama_model_get_vocab(model))
        n_ctx = _context_size(lib, model, options)
        ctx = lib.llama_init_from_model(model, _context_params(lib, n_ctx, options))
        if not ctx:
            lib.llama_model_free(model)
            raise ModelLoadError(f"{file.name}: llama.cpp could not create a context of {n_ctx} tokens (out of "
                                 "memory? try a smaller ctx_size; a quantized cache_type needs flash_attn)")  # fmt: skip
        info = _model_info(lib, model, tokenizer, name, path, lib.llama_n_ctx(ctx), options)  # n_ctx rounded up
        log.info("Loaded %s (%s): %.1fM parameters, %s, context %d", name, file.name, info.parameters / 1e6,
                 info.dtype, info.context_length)  # fmt: skip
        return cls(lib, model, ctx, tokenizer, info, options)

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

    # Model side: scheduler worker only.
    def prepare(self) -> None:
        """Start the thread governor on the worker thread (see LlamaCppEngine.prepare)."""
        self.engine.prepare()

    def start(self, spec: SequenceSpec) -> None:
        """Admit a sequence (prefilled during the next steps)."""
        self.engine.start(spec)

    def step(self) -> list[TokenEvent]:
        """One llama_decode: a token for every decoding sequence plus a prefill chunk for newcomers."""
        return self.engine.step()

    def release(self, seq_id: int) -> None:
        """Drop a finished or cancelled sequence (its cells may stay as a reusable prefix)."""
        self.engine.release(seq_id)

    def active(self) -> int:
        """Admitted sequences (prefilling or decoding)."""
        return self.engine.active()

    def reset(self) -> None:
        """Drop every sequence and every kept prefix."""
        self.engine.reset()

    def next_token_probs(self, prompt_ids, sampling, top: int) -> list[tuple[int, float]]:
        """Top next-token (id, probability) pairs after the prompt."""
        return self.engine.next_token_probs(prompt_ids, sampling, top)

    def prompt_logprobs(self, prompt_ids, top: int):
        """Per-token logprobs of a prompt (for completions' echo)."""
        return self.engine.prompt_logprobs(prompt_ids, top)

    def unload(self) -> None:
        """Free the context and the weights."""
        self.engine.close()
        self._free()


def _free_native(lib, model, ctx, batch, tokenizer: GGUFTokenizer) -> None:
    tokenizer.close()  # waits for a tokenizer call in flight
    lib.llama_batch_free(batch)
    lib.llama_free(ctx)
    lib.llama_model_free(model)


def cpu_threads(options: Mapping[str, Any]) -> int:
    """The CPU threads option (0: every core)."""
    return int(options.get("threads") or 0) or max(1, os.cpu_count() or 1)


def _model_params(lib, options: Mapping[str, Any]):
    params = lib.llama_model_default_params()
    params.n_gpu_layers = 0 if options.get("cpu") else int(options.get("gpu_layers", -1))
    mmap, mlock = not options.get("no_mmap"), bool(options.get("mlock"))
    params.load_mode = {(True, False): LOAD_MODE_MMAP, (True, True): LOAD_MODE_MMAP_MLOCK,
                        (False, True): LOAD_MODE_MLOCK, (False, False): LOAD_MODE_NONE}[(mmap, mlock)]  # fmt: skip
    return params


def _context_size(lib, model, options: Mapping[str, Any]) -> int:
    trained = lib.llama_model_n_ctx_train(model)
    return int(options.get("ctx_size") or 0) or min(trained if trained > 0 else DEFAULT_CONTEXT, DEFAULT_CONTEXT)


def _context_params(lib, n_ctx: int, options: Mapping[str, Any]):
    from modules.loaders.llama_cpp_engine import batch_tokens, sequence_slots

    params = lib.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = batch_tokens(options)  # the most tokens one llama_decode gets: decode rows + a prefill chunk
    params.n_ubatch = min(params.n_batch, 512)
    params.n_seq_max = min(sequence_slots(options), lib.llama_max_parallel_sequences())
    params.kv_unified = True  # one pool of n_ctx cells for every sequence: shared prefixes are shared cells
    params.n_threads = params.n_threads_batch = cpu_threads(options)
    params.flash_attn_type = _choice(options, "flash_attn", FLASH_ATTN, "auto")
    params.type_k = params.type_v = _choice(options, "cache_type", CACHE_TYPES, "f16")
    params.no_perf = True
    return params


def _choice(options: Mapping[str, Any], key: str, table: Mapping[str, int], default: str) -> int:
    value = options.get(key) or default
    if value not in table:
        raise ModelLoadError(f"unknown {key} {value!r} (choose from {', '.join(table)})")
    return table[value]


def _model_info(lib, model, tokenizer: GGUFTokenizer, name: str, path: Path, n_ctx: int, options) -> ModelInfo:
    vocab = tokenizer.vocab
    bos = lib.llama_vocab_bos(vocab)
    eos = lib.llama_vocab_eos(vocab)
    # Every end-of-generation token llama.cpp knows (eos, eot, eom and the ones named like <|im_end|>), as the
    # Transformers loader takes generation_config's eos list plus the tokenizer's.
    eog = [t for t in range(tokenizer.size) if lib.llama_vocab_is_eog(vocab, t)]
    template = lib.llama_model_chat_template(model, None)
    offloaded = lib.llama_supports_gpu_offload() and not options.get("cpu") and options.get("gpu_layers", -1) != 0
    return ModelInfo(
        name=name,
        path=path,
        loader=LlamaCppLoader.name,
        context_length=n_ctx,
        vocab_size=tokenizer.size,
        eos_token_ids=tuple(([eos] if eos >= 0 else []) + [t for t in eog if t != eos]),
        bos_token=tokenizer.text_of(bos if bos >= 0 else None),
        bos_token_id=bos if bos >= 0 else None,
        eos_token=tokenizer.text_of(eos if eos >= 0 else None),
        chat_template=template.decode("utf-8", errors="replace") if template else None,
        generation_defaults=_sampling_defaults(lib, model),
        device="gpu" if offloaded else "cpu",
        dtype=FILE_TYPES.get(_meta_int(lib, model, "general.file_type"), "gguf"),
        parameters=int(lib.llama_model_n_params(model)),
    )


def _meta(lib, model, key: str) -> str | None:
    buf = ctypes.create_string_buffer(256)
    n = lib.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
    return buf.value.decode("utf-8", errors="replace") if n >= 0 else None


def _meta_int(lib, model, key: str) -> int | None:
    value = _meta(lib, model, key)
    return int(value) if value is not None and value.lstrip("-").isdigit() else None


def _sampling_defaults(lib, model) -> dict:
    # Sampler defaults the model's authors shipped (general.sampling.*, GGUF's generation_config); requests win.
    defaults = {}
    for key, name in SAMPLING_KEYS.items():
        value = _meta(lib, model, f"general.sampling.{key}")
        try:
            defaults[name] = int(value) if name == "top_k" else float(value)
        except (TypeError, ValueError):
            continue
    return defaults
