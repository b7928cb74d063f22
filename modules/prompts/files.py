"""Safe file discovery shared by templates and characters: names map to files found in one folder, never to paths."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import yaml


class FileProblem(Exception):
    """A file could not be used; the message names the file and says why."""


def check_name(name: Any) -> str | None:
    """Return the name if it can name a file in a folder, else None (separators, '..', NUL, empty)."""
    if not isinstance(name, str):
        return None
    name = name.strip()
    if not name or name in (".", "..") or any(c in name for c in "/\\\x00") or name.startswith("."):
        return None
    return name


def discover(folder: Path, suffixes: tuple[str, ...]) -> tuple[dict[str, Path], list[str]]:
    """Map stem -> file for files in `folder` with the given suffixes (earlier suffixes win on clashes).

    Files that resolve outside the folder (symlinks) are skipped and reported.
    """
    found: dict[str, Path] = {}
    problems: list[str] = []
    if not folder.is_dir():
        return found, problems
    root = folder.resolve()
    rank = {suffix: i for i, suffix in enumerate(suffixes)}
    candidates = (p for p in folder.iterdir() if p.suffix.lower() in rank)
    files = sorted(candidates, key=lambda p: (p.stem, rank[p.suffix.lower()]))
    for path in files:
        if not path.is_file():
            continue
        if not path.resolve().is_relative_to(root):
            problems.append(f"{_show(path)}: skipped, it points outside {_show(folder)}")
        elif path.stem in found:
            problems.append(f"{_show(path)}: skipped, {found[path.stem].name} has the same name")
        elif check_name(path.stem) is None:
            problems.append(f"{_show(path)}: skipped, the file name cannot be used as a name")
        else:
            found[path.stem] = path
    return found, problems


def read_data(path: Path) -> Any:
    """Parse a YAML or JSON file; FileProblem naming the file if it is unreadable or malformed."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FileProblem(f"{_show(path)}: cannot be read ({exc})") from None
    try:
        return json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        reason = str(exc).replace("\n", " ")
        raise FileProblem(f"{_show(path)}: is not valid {path.suffix.lstrip('.').upper()} ({reason})") from None


def lookup(names: Mapping[str, Any], name: Any) -> Any | None:
    """Find an entry by exact name, else by a unique case-insensitive match; None if not found or unsafe."""
    name = check_name(name)
    if name is None:
        return None
    if name in names:
        return names[name]
    folded = [key for key in names if key.casefold() == name.casefold()]
    return names[folded[0]] if len(folded) == 1 else None


def _show(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"
