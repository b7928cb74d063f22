"""The registry of engine kinds a pool entry can be: how a serving-file entry names its kind, parses and is built.

A new kind is a new engine file plus a line in KINDS; nothing else branches on a kind's name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from modules.engine.base import Engine
from modules.errors import InvalidParameter, SettingsError


@dataclass(frozen=True)
class BuildContext:
    """What building an entry's engine may need from the pool and the runtime."""

    make_local: Callable[[str | None], Engine]  # a local engine (with its own scheduler) for an entry name
    resolve: Callable[[str], Engine]  # the engine that serves another entry (with its fallbacks)
    preferences: Any = None  # modules.preferences.PreferenceLog or None


@dataclass(frozen=True)
class EngineKind:
    """How entries of one kind are recognised, parsed and built."""

    matches: Callable[[dict], bool]  # the entry's raw settings are of this kind
    parse: Callable[[str, dict, str, str, tuple[str, ...]], Any]  # (name, settings, where, version, fallback) -> spec
    build: Callable[[Any, BuildContext], Engine]
    label: str  # what the UI calls an entry of this kind


def _parse_api(name: str, spec: dict, where: str, version: str, fallback: tuple[str, ...]):
    from modules.engine.remote import parse_api_spec
    from modules.samplers import SAMPLER_NAMES, checked_values

    settings = {k: spec.pop(k) for k in sorted((set(SAMPLER_NAMES) | {"seed"}) & set(spec))}
    try:
        checked_values(settings, f"models.{name}")
    except InvalidParameter as exc:
        raise SettingsError(f"{where}: {exc.message}") from None
    return parse_api_spec(name, spec, where, settings, version, fallback)


def _build_api(spec, context: BuildContext) -> Engine:
    from modules.engine.remote import RemoteEngine

    return RemoteEngine(spec)


def _parse_split(name: str, spec: dict, where: str, version: str, fallback: tuple[str, ...]):
    from modules.engine.split import parse_split_spec

    return parse_split_spec(name, spec, where, version, fallback)


def _build_split(spec, context: BuildContext) -> Engine:
    from modules.engine.split import SplitEngine

    return SplitEngine(spec, context.resolve, context.preferences)


def _parse_local(name: str, spec: dict, where: str, version: str, fallback: tuple[str, ...]):
    from modules.serving import parse_local_entry

    return parse_local_entry(name, spec, where, version, fallback)


KINDS: dict[str, EngineKind] = {
    "api": EngineKind(lambda s: s.get("device") == "api", _parse_api, _build_api, "API model"),
    "split": EngineKind(lambda s: "split" in s, _parse_split, _build_split, "A/B split"),
    "local": EngineKind(lambda s: True, _parse_local, lambda spec, context: context.make_local(spec.name), "model"),
}


def parse_entry(name: str, spec: dict, where: str, version: str, fallback: tuple[str, ...]):
    """The spec of a serving-file entry, parsed by the first kind that matches it."""
    device = spec.get("device")
    if device is not None and device != "api":
        raise SettingsError(f"{where}: models.{name}.device must be 'api' (an API model) or absent (a local model)")
    kind = next(k for k in KINDS.values() if k.matches(spec))
    return kind.parse(name, spec, where, version, fallback)


def kind_label(spec) -> str:
    """What the UI calls the entry `spec` describes."""
    return KINDS[spec.kind].label


def build_engine(spec, context: BuildContext) -> Engine:
    """The engine of an entry (spec.kind names its kind)."""
    return KINDS[spec.kind].build(spec, context)
