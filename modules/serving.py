"""The serving file (`server.py --serve FILE`): which named entries the model pool holds and which is the default.

```yaml
models:
  primary: {model: Qwen_Qwen2.5-0.5B-Instruct, loader: transformers, version: "2"}
  small: {model: hearth-demo, instruction_template: ChatML, max_batch_size: 4, temperature: 0}
default: primary
```
Parsed into frozen dataclasses; any mistake is a SettingsError naming the key (server.py prints it, exits 2).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from modules.errors import InvalidParameter, SettingsError
from modules.loaders.registry import checked_options, option_names
from modules.samplers import SAMPLER_NAMES, checked_values

PROMPT_SETTINGS = frozenset({"instruction_template", "instruction_template_str"})
# What an entry may set besides load options: its prompt format and its sampler defaults (below the request's).
ENTRY_SETTINGS = PROMPT_SETTINGS | frozenset(SAMPLER_NAMES) | {"seed"}
ENTRY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # no ':' (it separates MODEL:VERSION), no '/'


@dataclass(frozen=True)
class EntrySpec:
    """One named pool entry: the model folder it serves and how it is loaded."""

    name: str
    model: str
    version: str = ""
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    prompt_settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # ENTRY_SETTINGS


@dataclass(frozen=True)
class ServingConfig:
    """Every entry of the serving file, in file order, and the one serving requests without `model`."""

    entries: tuple[EntrySpec, ...]
    default: str


def check_entry_name(name: object, where: str = "name") -> str:
    """`name` if it can name a pool entry; SettingsError otherwise."""
    if not isinstance(name, str) or not ENTRY_NAME.match(name):
        raise SettingsError(f"{where}: invalid entry name {name!r} (letters, digits, '.', '_', '-'; no ':' or '/')")
    return name


def load_serving(path: Path) -> ServingConfig:
    """Read and check a serving file."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"serving file {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SettingsError(f"serving file {path}: invalid YAML ({first})") from None
    return parse_serving(data, str(path))


def parse_serving(data: object, where: str = "serving file") -> ServingConfig:
    """A ServingConfig from the YAML's parsed data."""
    if not isinstance(data, dict):
        raise SettingsError(f"{where}: the top level must be a mapping with 'models' (and 'default')")
    unknown = sorted(set(map(str, data)) - {"models", "default"})
    if unknown:
        raise SettingsError(f"{where}: unknown key {unknown[0]!r} (known: default, models)")
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise SettingsError(f"{where}: 'models' must map entry names to their settings")
    entries = tuple(_entry(name, spec, where) for name, spec in models.items())
    default = data.get("default", entries[0].name)
    if default not in {e.name for e in entries}:
        names = ", ".join(e.name for e in entries)
        raise SettingsError(f"{where}: default {default!r} is not one of the entries ({names})")
    return ServingConfig(entries, default)


def _entry(name: object, spec: object, where: str) -> EntrySpec:
    name = check_entry_name(name, f"{where}: models")
    if isinstance(spec, str):
        spec = {"model": spec}
    if not isinstance(spec, dict):
        raise SettingsError(f"{where}: models.{name} must be a mapping with 'model'")
    spec = {str(k): v for k, v in spec.items()}
    model = spec.pop("model", None)
    if not isinstance(model, str) or not model.strip():
        raise SettingsError(f"{where}: models.{name}.model must name a model folder")
    version = spec.pop("version", "")
    if not isinstance(version, (str, int, float)) or isinstance(version, bool):
        raise SettingsError(f"{where}: models.{name}.version must be a string")
    settings = {k: spec.pop(k) for k in sorted(ENTRY_SETTINGS & set(spec))}
    unknown = sorted(set(spec) - set(option_names()))
    if unknown:
        known = ", ".join(sorted({*option_names(), *ENTRY_SETTINGS, "model", "version"}))
        raise SettingsError(f"{where}: unknown option models.{name}.{unknown[0]} (known: {known})")
    try:
        options = checked_options(spec, f"models.{name}")
        settings = checked_settings(settings, f"models.{name}")
    except InvalidParameter as exc:
        raise SettingsError(f"{where}: {exc.message}") from None
    return EntrySpec(name, model, str(version), MappingProxyType(options), MappingProxyType(settings))


def checked_settings(settings: dict, where: str) -> dict:
    """Entry settings with sampler values checked (InvalidParameter naming `where.key`) and templates as strings."""
    for key in PROMPT_SETTINGS & set(settings):
        if not isinstance(settings[key], str):
            raise InvalidParameter(f"{where}.{key} must be a string", param=f"{where}.{key}")
    checked_values({k: v for k, v in settings.items() if k not in PROMPT_SETTINGS}, where)
    return settings
