"""Checks on a Hugging Face model folder before loading, so a broken folder gets a clear cause."""
from __future__ import annotations

import json
import struct
from pathlib import Path

from modules.errors import ModelLoadError

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def read_config(path: Path) -> dict:
    """Parse config.json, naming the problem if it is missing or invalid."""
    config = path / "config.json"
    if not config.is_file():
        raise ModelLoadError(f"{path.name}: config.json is missing")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path.name}: config.json is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path.name}: config.json must hold a JSON object")
    return data


def check_model_folder(path: Path) -> None:
    """Raise ModelLoadError if config, weights or tokenizer files are missing or truncated."""
    read_config(path)
    weights = [f for pattern in WEIGHT_PATTERNS for f in path.glob(pattern)]
    if not weights:
        raise ModelLoadError(f"{path.name}: no weights found (expected *.safetensors or pytorch_model*.bin)")
    _check_index(path)
    for f in weights:
        if f.suffix == ".safetensors":
            _check_safetensors(f)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(f"{path.name}: no tokenizer files found (tokenizer.json, tokenizer.model, ...)")


def _check_index(path: Path) -> None:
    for index in path.glob("*.index.json"):
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelLoadError(f"{path.name}: {index.name} is invalid ({exc})") from None
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            raise ModelLoadError(f"{path.name}: missing weight shards {', '.join(missing)} (incomplete download?)")


def _check_safetensors(file: Path) -> None:
    # A safetensors file is an 8-byte header length, a JSON header, then the tensor bytes.
    size = file.stat().st_size
    try:
        with file.open("rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(fh.read(header_len))
    except (OSError, struct.error, ValueError) as exc:
        raise ModelLoadError(f"{file.parent.name}: {file.name} is corrupt ({exc})") from None
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    if 8 + header_len + max(ends, default=0) > size:
        raise ModelLoadError(f"{file.parent.name}: {file.name} is truncated (incomplete download?)")


def quant_method(config: Path) -> str | None:
    """config.json's quantization_config.quant_method (e.g. "exl2"), or None."""
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    quant = data.get("quantization_config") if isinstance(data, dict) else None
    return quant.get("quant_method") if isinstance(quant, dict) else None
