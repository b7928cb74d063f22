"""Fallback: an entry's own engine first, then the entries named in its `fallback:` list, in order.

Only failures before any content reached the client move on (an API model's UpstreamFailed: down, rate-limited,
timed out; a local entry that is unloaded, full or shutting down). The client's own mistakes (a 400) never do.
"""
from __future__ import annotations

import logging
from typing import Callable, TypeVar

from modules.engine.base import (
    Capabilities, ChatRequest, CompletionRequest, Engine, Generation, PromptPreview, SamplerValues, TokenProb,
)
from modules.errors import HearthError, ModelNotLoaded, QueueFull, ServerShuttingDown, UpstreamFailed

log = logging.getLogger(__name__)
T = TypeVar("T")
MOVES_ON = (UpstreamFailed, ModelNotLoaded, QueueFull, ServerShuttingDown)


class FallbackEngine(Engine):
    """The primary engine, with the alternates tried in order when it fails before answering."""

    def __init__(self, primary: Engine, alternates: Callable[[], list[Engine]]):
        self.primary = primary
        self._alternates = alternates  # resolved per request, so a reloaded entry is found

    def __getattr__(self, name: str):
        return getattr(self.primary, name)  # what only the primary's kind has (a local entry's manager, ...)

    @property
    def name(self) -> str | None:
        """The primary's name."""
        return self.primary.name

    @property
    def capabilities(self) -> Capabilities:
        """The primary's capabilities (the request is checked against them before any fallback)."""
        return self.primary.capabilities

    def chat(self, request: ChatRequest) -> Generation:
        """The first engine's answer that starts."""
        return self._first(lambda engine: engine.chat(request))

    def complete(self, request: CompletionRequest) -> Generation:
        """The first engine's answer that starts."""
        return self._first(lambda engine: engine.complete(request))

    def embed(self, texts: list[str], dimensions: int | None = None) -> tuple[list[list[float]], int]:
        """Embeddings from the first engine that answers and can embed."""
        return self._first(lambda engine: engine.embed(texts, dimensions), need="embeddings")

    def preview(self, request: ChatRequest) -> PromptPreview:
        """The primary's prompt."""
        return self.primary.preview(request)

    def next_token_probs(self, prompt: str, sampling: SamplerValues | None, top: int) -> list[TokenProb]:
        """The primary's next-token probabilities."""
        return self.primary.next_token_probs(prompt, sampling, top)

    def encode(self, text: str) -> list[int]:
        """The primary's tokens."""
        return self.primary.encode(text)

    def decode(self, ids: list[int]) -> str:
        """The primary's text."""
        return self.primary.decode(ids)

    def health(self) -> list[dict]:
        """The primary's state."""
        return self.primary.health()

    def _first(self, call: Callable[[Engine], T], need: str | None = None) -> T:
        failures: list[tuple[str, HearthError]] = []
        for engine in [self.primary, *self._alternates()]:
            try:
                if need is not None and failures and not getattr(engine.capabilities, need):
                    continue
                result = call(engine)
            except MOVES_ON as exc:
                failures.append((engine.name or "default", exc))
                log.warning("entry %s failed before answering (%s); trying the next fallback", engine.name,
                            exc.message)  # fmt: skip
                continue
            if failures:
                log.info("entry %s answered for %s", engine.name, self.primary.name)
            return result
        if len(failures) == 1:
            raise failures[0][1]
        tried = "; ".join(f"{name}: {exc.message}" for name, exc in failures)
        limited = all(isinstance(e, QueueFull) or getattr(e, "rate_limited", False) for _, e in failures)
        raise UpstreamFailed(f"every entry failed ({tried})", rate_limited=limited)
