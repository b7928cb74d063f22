"""The serving file (`server.py --serve FILE`): which named entries the model pool holds and which is the default.

```yaml
models:
  primary: {model: Qwen_Qwen2.5-0.5B-Instruct, loader: transformers, version: "2"}
  small: {model: hearth-demo, instruction_template: ChatML, max_batch_size: 4, temperature: 0}
  cloud: {device: api, base_url: "https://api.example.com/v1", api_key_env: OPENAI_API_KEY, fallback: [primary]}
  ab: {split: {cloud: 1, primary: 1}}
default: primary
preference_log: logs/preferences.jsonl
```
Which kind an entry is (a local model, an API model, a split) is decided by modules.engine.kinds. Parsed into
frozen dataclasses; any mistake is a SettingsError naming the key (server.py prints it, exits 2).
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
    fallback: tuple[str, ...] = ()  # entries tried in order when this one fails before answering
    kind: str = "local"


@dataclass(frozen=True)
class ServingConfig:
    """Every entry of the serving file, in file order, the one serving requests without `model`, and the log."""

    entries: tuple[Any, ...]  # EntrySpec, or another kind's spec (modules.engine.kinds)
    default: str
    preference_log: str | None = None  # the JSONL file A/B answers, ratings and votes go to (None: not written)


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
    unknown = sorted(set(map(str, data)) - {"models", "default", "preference_log"})
    if unknown:
        raise SettingsError(f"{where}: unknown key {unknown[0]!r} (known: default, models, preference_log)")
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise SettingsError(f"{where}: 'models' must map entry names to their settings")
    entries = tuple(_entry(name, spec, where) for name, spec in models.items())
    default = data.get("default", entries[0].name)
    if default not in {e.name for e in entries}:
        names = ", ".join(e.name for e in entries)
        raise SettingsError(f"{where}: default {default!r} is not one of the entries ({names})")
    _check_references(entries, where)
    log_path = data.get("preference_log")
    if log_path is not None and (not isinstance(log_path, str) or not log_path.strip()):
        raise SettingsError(f"{where}: preference_log must be a file path")
    return ServingConfig(entries, default, log_path)


def _check_references(entries: tuple, where: str) -> None:
    """Fallbacks and split arms name other entries; a split's arms are not splits."""
    kinds = {e.name: e.kind for e in entries}
    for entry in entries:
        for target in entry.fallback:
            if target not in kinds or target == entry.name:
                raise SettingsError(f"{where}: models.{entry.name}.fallback: {target!r} is not another entry "
                                    f"(entries: {', '.join(kinds)})")  # fmt: skip
        for arm, _ in getattr(entry, "arms", ()):
            if arm not in kinds or kinds[arm] == "split":
                raise SettingsError(f"{where}: models.{entry.name}.split: {arm!r} is not an entry that serves "
                                    f"requests itself (entries: {', '.join(n for n, k in kinds.items() if k != 'split')})")


def _entry(name: object, spec: object, where: str):
    from modules.engine.kinds import parse_entry  # the kinds import this module's local-entry parser

    name = check_entry_name(name, f"{where}: models")
    if isinstance(spec, str):
        spec = {"model": spec}
    if not isinstance(spec, dict):
        raise SettingsError(f"{where}: models.{name} must be a mapping with 'model' (or 'device: api', or 'split')")
    spec = {str(k): v for k, v in spec.items()}
    version = spec.pop("version", "")
    if not isinstance(version, (str, int, float)) or isinstance(version, bool):
        raise SettingsError(f"{where}: models.{name}.version must be a string")
    fallback = spec.pop("fallback", ())
    fallback = [fallback] if isinstance(fallback, str) else fallback
    if not isinstance(fallback, (list, tuple)) or not all(isinstance(f, str) for f in fallback):
        raise SettingsError(f"{where}: models.{name}.fallback must be a list of entry names")
    return parse_entry(name, spec, where, str(version), tuple(fallback))


def parse_local_entry(name: str, spec: dict, where: str, version: str, fallback: tuple[str, ...]) -> EntrySpec:
    """A local model's entry: its model folder, load options and settings."""
    model = spec.pop("model", None)
    if not isinstance(model, str) or not model.strip():
        raise SettingsError(f"{where}: models.{name}.model must name a model folder")
    settings = {k: spec.pop(k) for k in sorted(ENTRY_SETTINGS & set(spec))}
    unknown = sorted(set(spec) - set(option_names()))
    if unknown:
        known = ", ".join(sorted({*option_names(), *ENTRY_SETTINGS, "model", "version", "fallback"}))
        raise SettingsError(f"{where}: unknown option models.{name}.{unknown[0]} (known: {known})")
    try:
        options = checked_options(spec, f"models.{name}")
        settings = checked_settings(settings, f"models.{name}")
    except InvalidParameter as exc:
        raise SettingsError(f"{where}: {exc.message}") from None
    return EntrySpec(name, model, version, MappingProxyType(options), MappingProxyType(settings), fallback)


def checked_settings(settings: dict, where: str) -> dict:
    """Entry settings with sampler values checked (InvalidParameter naming `where.key`) and templates as strings."""
    for key in PROMPT_SETTINGS & set(settings):
        if not isinstance(settings[key], str):
            raise InvalidParameter(f"{where}.{key} must be a string", param=f"{where}.{key}")
    checked_values({k: v for k, v in settings.items() if k not in PROMPT_SETTINGS}, where)
    return settings
