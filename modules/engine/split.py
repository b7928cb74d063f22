"""A/B splits: an entry whose requests are each served by one of other entries (its arms), chosen by weight.

With `sticky: true` (the default) a request's `user` always gets the same arm; without a `user`, arms are drawn at
random. Every answer served through a split is written to the preference log (when one is configured) under the
response id the client sees, so `POST /v1/feedback` can rate it.
"""
from __future__ import annotations

import hashlib
import random
import uuid
from dataclasses import dataclass
from typing import Callable, Iterator

from modules.engine.base import (
    Capabilities, ChatRequest, CompletionRequest, Engine, Generation, PromptPreview, SamplerValues, Stream,
    TokenProb,
)
from modules.errors import InvalidParameter, SettingsError
from modules.generation import Completion, Delta


@dataclass(frozen=True)
class SplitSpec:
    """A split entry of the serving file: arms (entry names) and their weights."""

    name: str
    arms: tuple[tuple[str, float], ...]
    sticky: bool = True
    version: str = ""
    fallback: tuple[str, ...] = ()
    kind: str = "split"


class SplitEngine(Engine):
    """Sends each request to one arm's engine and logs what it answered."""

    def __init__(self, spec: SplitSpec, resolve: Callable[[str], Engine], preferences=None):
        self.spec = spec
        self._resolve = resolve  # an arm's name -> the engine serving it (with its own fallbacks)
        self._log = preferences  # modules.preferences.PreferenceLog or None
        self._random = random.Random()

    @property
    def name(self) -> str:
        """The split's name."""
        return self.spec.name

    @property
    def capabilities(self) -> Capabilities:
        """What every arm can do (a request must work whichever arm it gets)."""
        caps = [self._resolve(arm).capabilities for arm, _ in self.spec.arms]
        return Capabilities(**{f: all(getattr(c, f) for c in caps) for f in ("templates", "token_ids", "logprobs",
                                                                             "prompt_logprobs", "logits",
                                                                             "constraints")},
                            max_batch=min(c.max_batch for c in caps))  # fmt: skip

    def pick(self, user: str | None) -> str:
        """The arm that serves a request from `user`."""
        total = sum(w for _, w in self.spec.arms)
        if user and self.spec.sticky:
            digest = hashlib.sha256(f"{self.spec.name}\0{user}".encode()).digest()
            point = int.from_bytes(digest[:8], "big") / 2**64 * total
        else:
            point = self._random.random() * total
        for arm, weight in self.spec.arms:
            point -= weight
            if point < 0:
                return arm
        return self.spec.arms[-1][0]

    def chat(self, request: ChatRequest) -> Generation:
        """One arm's answer, logged."""
        arm = self.pick(request.user)
        gen = self._resolve(arm).chat(request)
        return self._logged(gen, arm, "chatcmpl", [{"messages": [dict(m) for m in request.messages]}])

    def complete(self, request: CompletionRequest) -> Generation:
        """One arm's answer to every prompt, logged."""
        arm = self.pick(request.user)
        gen = self._resolve(arm).complete(request)
        prompts = [{"prompt": p if isinstance(p, str) else list(p)} for p in request.prompts]
        return self._logged(gen, arm, "cmpl", prompts)

    def preview(self, request: ChatRequest) -> PromptPreview:
        """The prompt of the arm `request.user` would get."""
        return self._resolve(self.pick(request.user)).preview(request)

    def next_token_probs(self, prompt: str, sampling: SamplerValues | None, top: int) -> list[TokenProb]:
        """Refused: probabilities differ per arm; name an arm instead."""
        raise InvalidParameter(f"{self.name!r} is an A/B split; ask one of its arms "
                               f"({', '.join(a for a, _ in self.spec.arms)})", param="model")  # fmt: skip

    def _logged(self, gen: Generation, arm: str, prefix: str, requests: list[dict]) -> Generation:
        gen.id = f"{prefix}-{uuid.uuid4().hex}"
        if self._log is not None and gen.handles:
            def record(request: dict, text: str) -> None:
                self._log.record_response(gen.id, self.name, arm, gen.model, request, text)

            gen.handles = [LoggedStream(h, lambda text, r=r: record(r, text)) for h, r in zip(gen.handles, requests)]
        return gen


class LoggedStream:
    """A Stream that reports its first choice's full text once it has ended normally."""

    def __init__(self, inner: Stream, on_done: Callable[[str], None]):
        self._inner = inner
        self._on_done = on_done
        self._parts: list[str] = []

    @property
    def usage(self):
        """The inner stream's usage."""
        return self._inner.usage

    @property
    def n(self) -> int:
        """How many choices."""
        return self._inner.n

    @property
    def wants_logprobs(self) -> bool:
        """As the inner stream."""
        return self._inner.wants_logprobs

    def events(self, idle: float | None = None) -> Iterator[Delta | None]:
        """The inner deltas; logs when they end without error."""
        for delta in self._inner.events(idle):
            if delta is not None and delta.index == 0:
                self._parts.append(delta.text)
            yield delta
        self._on_done("".join(self._parts))

    def result(self) -> Completion:
        """The inner result, logged."""
        completion = self._inner.result()
        self._on_done(completion.choices[0].text if completion.choices else "")
        return completion

    def cancel(self) -> None:
        """Cancel the inner stream."""
        self._inner.cancel()


def parse_split_spec(name: str, spec: dict, where: str, version: str, fallback: tuple[str, ...]) -> SplitSpec:
    """A SplitSpec from a serving-file entry with `split:` (SettingsError naming the key)."""
    unknown = sorted(set(spec) - {"split", "sticky"})
    if unknown:
        raise SettingsError(f"{where}: unknown option models.{name}.{unknown[0]} for a split (known: split, sticky)")
    arms = spec["split"]
    if not isinstance(arms, dict) or len(arms) < 2:
        raise SettingsError(f"{where}: models.{name}.split must map at least two entry names to weights")
    for arm, weight in arms.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
            raise SettingsError(f"{where}: models.{name}.split.{arm} must be a positive weight")
    sticky = spec.get("sticky", True)
    if not isinstance(sticky, bool):
        raise SettingsError(f"{where}: models.{name}.sticky must be true or false")
    if fallback:
        raise SettingsError(f"{where}: models.{name}: a split has no fallback of its own (give its arms one)")
    return SplitSpec(name, tuple((str(a), float(w)) for a, w in arms.items()), sticky, version)
