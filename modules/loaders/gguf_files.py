"""GGUF files in the models folder: which file an entry's model is (split parts included), a quick header check.

Pure Python and cheap: the registry's pre-load check and the llama.cpp loader both use it.
"""
from __future__ import annotations

import re
import struct
from pathlib import Path

from modules.errors import ModelLoadError

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # what llama.cpp reads today (1 is long gone)
SPLIT = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


def model_file(path: Path) -> Path:
    """The .gguf file to load for a models-folder entry: the file itself, or the one model a folder holds.

    A split model is loaded from its first part (llama.cpp finds the others by name); every part must be there and
    look like GGUF. Multimodal projectors (mmproj-*.gguf) sit beside some models and are not models themselves.
    """
    if path.is_file():
        first = path
    else:
        files = sorted(p for p in path.glob("*.gguf") if not p.name.lower().startswith("mmproj"))
        models = [p for p in files if (m := SPLIT.match(p.name)) is None or int(m["no"]) == 1]
        if not models:
            raise ModelLoadError(f"{path.name}: no .gguf model file in the folder")
        if len(models) > 1:
            names = ", ".join(p.name for p in models)
            raise ModelLoadError(f"{path.name} holds several GGUF models ({names}): keep one per folder")
        first = models[0]
    for part in split_parts(first):
        check_header(part)
    return first


def split_parts(first: Path) -> list[Path]:
    """Every file of the model whose first (or only) file is `first`; ModelLoadError naming a missing part."""
    match = SPLIT.match(first.name)
    if match is None:
        return [first]
    count = int(match["count"])
    if int(match["no"]) != 1:
        raise ModelLoadError(f"{first.name} is part {int(match['no'])} of a split model: load its first part")
    parts = [first.with_name(f"{match['prefix']}-{n:05d}-of-{count:05d}.gguf") for n in range(1, count + 1)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise ModelLoadError(f"{first.name}: split model incomplete, missing {', '.join(missing)}")
    return parts


def check_header(path: Path) -> None:
    """ModelLoadError unless `path` starts like a GGUF file llama.cpp can read."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise ModelLoadError(f"{path.name}: cannot be read ({exc.strerror})") from None
    if len(head) < 8 or head[:4] != MAGIC:
        raise ModelLoadError(f"{path.name} is not a GGUF file (it does not start with 'GGUF')")
    (version,) = struct.unpack("<I", head[4:])
    if version not in VERSIONS:
        raise ModelLoadError(f"{path.name}: GGUF version {version} is not supported (llama.cpp reads 2 and 3)")
