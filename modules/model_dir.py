"""Model discovery: what is in the models folder (the loader registry says which loader fits), safe names."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from modules.errors import ModelNotFound
from modules.loaders.registry import detect_loader


@dataclass(frozen=True)
class ModelEntry:
    """A model the user can load: its name (folder or file name), path and the loader that fits it."""

    name: str
    path: Path
    loader: str
    builtin: bool = False


def safe_child(base: Path, name: str, what: str = "model") -> Path:
    """`base/name` if `name` is one plain path component that stays inside `base` (symlinks included)."""
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        raise ModelNotFound(f"invalid {what} name {name!r}")
    if name in (".", "..") or "/" in name or "\\" in name or Path(name).is_absolute() or ":" in name[:2]:
        raise ModelNotFound(f"invalid {what} name {name!r}: it must be a name inside the folder, not a path")
    base_real = base.resolve()
    candidate = base / name
    try:
        real = candidate.resolve()
    except (OSError, RuntimeError):  # symlink loops
        raise ModelNotFound(f"{what} {name!r} cannot be resolved") from None
    if not real.is_relative_to(base_real) or real == base_real:
        raise ModelNotFound(f"{what} {name!r} points outside {base}")
    return candidate


def list_models(model_dir: Path, builtin: tuple[ModelEntry, ...] = ()) -> list[ModelEntry]:
    """Every loadable entry of `model_dir` (sorted by name), then built-in models not shadowed by one."""
    entries = []
    if model_dir.is_dir():
        for child in sorted(model_dir.iterdir(), key=lambda p: p.name.lower()):
            if child.name.startswith("."):
                continue
            try:
                safe_child(model_dir, child.name)
            except ModelNotFound:
                continue  # e.g. a symlink pointing out of the folder
            loader = detect_loader(child)
            if loader is not None:
                entries.append(ModelEntry(child.name, child, loader))
    names = {e.name for e in entries}
    return entries + [b for b in builtin if b.name not in names]


def resolve_model(model_dir: Path, name: str, builtin: tuple[ModelEntry, ...] = ()) -> ModelEntry:
    """The entry called `name`; ModelNotFound for unknown names or names that escape the folder."""
    path = safe_child(model_dir, name)
    loader = detect_loader(path) if path.exists() else None
    if loader is not None:
        return ModelEntry(name, path, loader)
    for entry in builtin:
        if entry.name == name:
            return entry
    if path.exists():
        raise ModelNotFound(f"{name!r} in {model_dir} is not a model (no config.json or .gguf file)")
    raise ModelNotFound(f"model {name!r} not found in {model_dir}{_choices(name, list_models(model_dir, builtin))}")


def _choices(name: str, entries: list[ModelEntry]) -> str:
    """' (did you mean X?; models: A, B)' for an unknown model name; '' when the folder has none."""
    names = [e.name for e in entries]
    if not names:
        return ""
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f" ({hint}models: {', '.join(names)})"
