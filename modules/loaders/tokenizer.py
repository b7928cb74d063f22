"""A thread-safe wrapper over a Hugging Face tokenizer: encode/decode and per-token bytes."""
from __future__ import annotations

import json
import re
import threading
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from modules.errors import ModelLoadError

BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class HFTokenizer:
    """Encode/decode from any thread; the Rust backend is used directly when there is one."""

    def __init__(self, tokenizer):
        self.hf = tokenizer
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self._lock = threading.Lock()  # slow (Python) tokenizers are not known to be thread-safe
        self._byte_level = self._backend is not None and _is_byte_level(self._backend)
        self.bos_token = tokenizer.bos_token
        self.eos_token = tokenizer.eos_token
        self.eos_token_id = tokenizer.eos_token_id
        self.bos_token_id = tokenizer.bos_token_id
        self.chat_template = _chat_template(tokenizer)
        self.model_max_length = getattr(tokenizer, "model_max_length", None)
        self.token_bytes = lru_cache(maxsize=65536)(self._token_bytes)

    @classmethod
    def load(cls, path: Path, trust_remote_code: bool = False) -> "HFTokenizer":
        """Load the tokenizer in `path`; ModelLoadError on failure."""
        from transformers import AutoTokenizer

        try:
            return cls(AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code))
        except Exception as exc:  # many kinds: missing sentencepiece, bad JSON, unknown class
            raise ModelLoadError(f"{path.name}: could not load the tokenizer ({type(exc).__name__}: {exc})") from exc

    def __len__(self) -> int:
        return len(self.hf)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; special-token text is recognised either way, BOS/EOS added only if asked."""
        if self._backend is not None:
            return self._backend.encode(text, add_special_tokens=add_special_tokens).ids
        with self._lock:
            return self.hf.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`."""
        ids = list(ids)
        if self._backend is not None:
            return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)
        with self._lock:
            return self.hf.decode(ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)

    def _token_bytes(self, token_id: int) -> bytes:
        piece = self.hf.convert_ids_to_tokens(int(token_id))
        if piece is None:
            return b""
        if self._byte_level:
            table = _unicode_to_bytes()
            if all(ch in table for ch in piece):
                return bytes(table[ch] for ch in piece)
        match = BYTE_TOKEN.fullmatch(piece)
        if match:  # SentencePiece byte fallback
            return bytes([int(match.group(1), 16)])
        if piece.startswith("\u2581"):  # SentencePiece word boundary
            return (" " + piece[1:].replace("\u2581", " ")).encode()
        return self.decode([token_id], skip_special_tokens=False).encode()


def _chat_template(tokenizer) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one is what chat uses
        template = template.get("default") or next(iter(template.values()), None)
    return template or None


def _is_byte_level(backend) -> bool:
    try:
        decoder = json.loads(backend.to_str()).get("decoder") or {}
    except ValueError:
        return False
    kinds = [decoder.get("type")] + [d.get("type") for d in decoder.get("decoders", []) or []]
    return "ByteLevel" in kinds


@lru_cache(maxsize=1)
def _unicode_to_bytes() -> dict[str, int]:
    # GPT-2's reversible byte <-> printable-unicode table.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, codes)}
