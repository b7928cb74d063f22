"""Sampler presets: text-generation-webui's flat YAML files in presets/ (`temperature: 0.7`, `top_p: 0.9`...).

Keys Hearth has no sampler for (tfs, mirostat, dry...) are kept out and listed in `Preset.ignored`, so
text-generation-webui presets load unchanged. `do_sample: false` means greedy, as it did there.
"""
from __future__ import annotations

import ast
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from modules.errors import HearthError, InvalidParameter
from modules.generation import SamplingParams
from modules.samplers import DEFAULTS, SAMPLER_NAMES, SAMPLERS

log = logging.getLogger(__name__)

SAMPLER_KEYS = SAMPLER_NAMES
INT_KEYS = tuple(s.name for s in SAMPLERS if s.kind is int)
NEUTRAL = MappingProxyType(dict(DEFAULTS))


class PresetError(HearthError):
    """A preset is missing, unreadable or holds a value out of range."""


@dataclass(frozen=True)
class Preset:
    """A named set of sampler values; keys it does not mention keep their neutral value."""

    name: str
    values: Mapping[str, float]
    ignored: tuple[str, ...] = ()

    def sampling(self, seed: int | None = None) -> SamplingParams:
        """The preset as SamplingParams (every sampler key filled in)."""
        return sampling_params({**NEUTRAL, **self.values}, seed)


def sampling_params(values: Mapping[str, Any], seed: int | None = None) -> SamplingParams:
    """SamplingParams from sampler values; a negative seed means random (text-generation-webui's -1)."""
    known = {k: (int(v) if k in INT_KEYS else float(v)) for k, v in values.items() if k in SAMPLER_KEYS}
    params = SamplingParams(**known, seed=None if seed is None or seed < 0 else int(seed))
    params.validate()
    return params


def preset_names(folder: Path) -> list[str]:
    """Names of the .yaml/.yml presets in `folder`, sorted case-insensitively."""
    if not folder.is_dir():
        return []
    names = {p.stem for p in folder.iterdir() if p.suffix.lower() in (".yaml", ".yml") and not p.name.startswith(".")}
    return sorted(names, key=str.lower)


def load_preset(folder: Path, name: str) -> Preset:
    """Read and check one preset; PresetError naming the file and the problem."""
    if name not in preset_names(folder):
        raise PresetError(f"there is no preset named {name!r} in {folder.name}/")
    path = next(p for p in (folder / f"{name}.yaml", folder / f"{name}.yml") if p.is_file())
    return parse_preset(name, _read_yaml(path))


def parse_preset(name: str, data: Any) -> Preset:
    """A Preset from a YAML mapping; PresetError for non-numbers or values out of range."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PresetError(f"preset {name}: the file must be a mapping of sampler names to values")
    values: dict[str, float] = {}
    for key, value in data.items():
        if key in SAMPLER_KEYS:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise PresetError(f"preset {name}: {key} must be a number, got {value!r}")
            values[key] = int(value) if key in INT_KEYS else float(value)
    if data.get("do_sample") is False:
        values["temperature"] = 0.0
    ignored = tuple(sorted(str(k) for k in data if k not in SAMPLER_KEYS and k != "do_sample"))
    preset = Preset(name, MappingProxyType(values), ignored)
    try:
        preset.sampling()
    except InvalidParameter as exc:
        raise PresetError(f"preset {name}: {exc.message}") from None
    if ignored:
        log.info("preset %s: ignoring settings Hearth has no sampler for: %s", name, ", ".join(ignored))
    return preset


def save_preset(folder: Path, name: str, values: Mapping[str, Any]) -> Path:
    """Write the sampler values as presets/<name>.yaml (atomically); PresetError for a bad name."""
    import yaml

    from modules.chat.conversation import HistoryError
    from modules.chat.history import atomic_write, check_name

    try:
        check_name(name, "preset name")
    except HistoryError as exc:
        raise PresetError(exc.message) from None
    preset = parse_preset(name, {k: v for k, v in values.items() if k in SAMPLER_KEYS})
    path = folder / f"{name}.yaml"
    atomic_write(path, yaml.safe_dump(dict(preset.values), sort_keys=False))
    return path


def parse_stop_strings(text: str) -> tuple[str, ...]:
    """Custom stop strings as text-generation-webui writes them (`"\\n", "###"`), or one per line."""
    text = (text or "").strip()
    if not text:
        return ()
    if text[0] in "\"'":
        try:
            parsed = ast.literal_eval(f"[{text}]")
        except (ValueError, SyntaxError):
            raise InvalidParameter('stop strings must be quoted and comma-separated, e.g. "\\n", "###"',
                                   param="stop") from None  # fmt: skip
        if all(isinstance(s, str) for s in parsed):
            return tuple(s for s in parsed if s)
        raise InvalidParameter("stop strings must be strings", param="stop")
    return tuple(line for line in text.splitlines() if line.strip())


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PresetError(f"preset {path.name}: cannot be read ({first})") from None
