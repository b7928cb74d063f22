"""The one definition of Hearth's sampler parameters: names, types, ranges, Hearth's defaults and the UI's sliders.

SamplingParams (its defaults and validation), settings.yaml's generation section, the API's request schemas, the
UI's Parameters tab, presets, the WebSocket/legacy routes and the logits route all read this table; the order in
which a value is chosen (request > pool entry settings > the model's generation_config > these defaults) is
modules.engine.params.sampling_params.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, make_dataclass

from modules.errors import InvalidParameter


@dataclass(frozen=True)
class Sampler:
    """One sampler parameter: its type, allowed range, Hearth's default, and the UI slider's span and step."""

    name: str
    kind: type  # float or int
    default: float
    low: float
    high: float | None  # None: unbounded above
    slider: tuple[float, float, float]  # UI (minimum, maximum, step); narrower than the allowed range
    low_open: bool = False  # `low` itself is not allowed
    help: str = ""

    def check(self, value, param: str | None = None) -> None:
        """InvalidParameter naming `param` (default: the sampler) if `value` has the wrong type or range."""
        param = param or self.name
        if self.kind is int:
            check_int(param, value, int(self.low), None if self.high is None else int(self.high))
        else:
            check_range(param, value, self.low, self.high, low_open=self.low_open)


SAMPLERS = (
    Sampler("temperature", float, 1.0, 0.0, 2.0, (0.0, 2.0, 0.01), help="0 = greedy"),  # OpenAI's range
    Sampler("top_p", float, 1.0, 0.0, 1.0, (0.01, 1.0, 0.01), low_open=True),
    Sampler("top_k", int, 0, 0, None, (0, 200, 1), help="0 = off"),
    Sampler("min_p", float, 0.0, 0.0, 1.0, (0.0, 1.0, 0.01)),
    Sampler("typical_p", float, 1.0, 0.0, 1.0, (0.01, 1.0, 0.01), low_open=True),
    Sampler("repetition_penalty", float, 1.0, 0.0, 100.0, (1.0, 1.5, 0.01), low_open=True),
    Sampler("presence_penalty", float, 0.0, -2.0, 2.0, (-2.0, 2.0, 0.05)),
    Sampler("frequency_penalty", float, 0.0, -2.0, 2.0, (-2.0, 2.0, 0.05)),
    Sampler("no_repeat_ngram_size", int, 0, 0, None, (0, 20, 1), help="0 = off; n: no n-gram of prompt+output twice"),
)
SAMPLER_NAMES = tuple(s.name for s in SAMPLERS)
BY_NAME = {s.name: s for s in SAMPLERS}
DEFAULTS = {s.name: s.default for s in SAMPLERS}


def checked_values(values, where: str) -> dict:
    """Sampler values (and `seed`) of a settings mapping, each checked; InvalidParameter naming `where.key`."""
    checked = {}
    for key, value in values.items():
        if key == "seed":
            check_int(f"{where}.seed", value, -(2**63), 2**64 - 1)
        else:
            BY_NAME[key].check(value, f"{where}.{key}")
        checked[key] = value
    return checked


def check_range(name: str, value, low: float, high: float | None, *, low_open: bool = False) -> None:
    """InvalidParameter unless `value` is a finite number in [low, high] ((low, high] with low_open)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidParameter(f"{name} must be a finite number, got {value!r}", param=name)
    if (high is not None and value > high) or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise InvalidParameter(f"{name} must be in {bracket}{low:g}, {high:g}], got {value!r}", param=name)


def check_int(name: str, value, low: int, high: int | None) -> None:
    """InvalidParameter unless `value` is an integer in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameter(f"{name} must be an integer, got {value!r}", param=name)
    if value < low or (high is not None and value > high):
        limit = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise InvalidParameter(f"{name} must be {limit}, got {value}", param=name)


# The sampler fields with Hearth's defaults, as a frozen dataclass for SamplingParams and settings.yaml's
# generation section to extend (so neither repeats the list).
SamplerFields = make_dataclass("SamplerFields", [(s.name, s.kind, s.default) for s in SAMPLERS], frozen=True)
SamplerFields.__module__ = __name__
SamplerFields.__doc__ = "Every sampler parameter with Hearth's default."
