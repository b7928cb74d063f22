"""An API model's answer as Hearth's Stream: what the upstream sent up to its first content (held back so a failing
member can still be retried elsewhere), then the rest as the call's reader thread gets it."""
from __future__ import annotations

import queue
import time
from typing import Iterator

from modules.engine.upstream import END, Call, Failure, broken, error_message
from modules.generation import Choice, Completion, Delta, FinishReason, Usage

FINISH = {"length": FinishReason.LENGTH}  # everything else upstream ("stop", "eos", "content_filter") ends as stop


def first_content(call: Call, n: int, chat: bool, timeout: float) -> list:
    """What the upstream sent up to and including its first content (or finish); Failure if it never came."""
    deadline = time.monotonic() + timeout
    held: list = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Failure(f"no content from the upstream within {timeout:g} s", status=408)
        try:
            item = call.inbox.get(timeout=left)
        except queue.Empty:
            continue
        if isinstance(item, Exception):
            raise item  # Failure (retry elsewhere) or UpstreamRejected (the client's mistake)
        if item is None or item is END:
            raise Failure("the upstream ended its stream before any content")
        error = item.data.get("error") if isinstance(item.data, dict) else None
        if error is not None:
            raise Failure(f"the upstream reported an error: {error_message(item.data)}")
        held.append(item)
        if any(d.text or d.finish_reason for d in _deltas(item.data, chat)):
            return held


def _deltas(data: dict, chat: bool) -> list[Delta]:
    """The text deltas of one upstream chunk (a role-only or usage-only chunk has none)."""
    deltas = []
    for choice in data.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if chat:
            text = (choice.get("delta") or choice.get("message") or {}).get("content") or ""
        else:
            text = choice.get("text") or ""
        reason = choice.get("finish_reason")
        finish = FINISH.get(reason, FinishReason.STOP) if reason else None
        if text or finish:
            deltas.append(Delta(int(choice.get("index") or 0), str(text), finish_reason=finish))
    return deltas


class RemoteStream:
    """One upstream answer as Hearth's Stream: held chunks first, then the rest as the reader thread gets them."""

    def __init__(self, call: Call, n: int, chat: bool, held: list, on_end, timeout: float, scrub=lambda m: m):
        self._call = call
        self._scrub = scrub
        self._last = time.monotonic()  # when the upstream last sent something
        self._n = n
        self._chat = chat
        self._held = list(held)
        self._on_end = on_end
        self._timeout = timeout
        self._finished = [False] * n
        self._completion_tokens = 0
        self._ended = False
        self.usage = Usage(0, 0)

    @property
    def n(self) -> int:
        """How many choices."""
        return self._n

    @property
    def wants_logprobs(self) -> bool:
        """Never: API models give no logprobs."""
        return False

    def events(self, idle: float | None = None) -> Iterator[Delta | None]:
        """Text deltas (what queued up meanwhile merged into one per choice, as under load every chunk costs the
        server CPU); UpstreamBroken if the upstream fails or stops before every choice has finished."""
        try:
            done = False
            while not done:
                first = self._held.pop(0) if self._held else self._next(idle)
                if first is _IDLE:
                    yield None
                    continue
                deltas: list[Delta] = []
                try:
                    for item in [first, *self._queued()]:
                        if item is END or item is None:
                            if item is None and not all(self._finished):
                                raise broken("the connection ended before the answer was complete")
                            deltas.extend(self._close_choices())
                            done = True
                            break
                        deltas.extend(self._chunk(item.data))
                finally:
                    yield from _merged(deltas)  # what came before a failure still reaches the client
        finally:
            self.cancel()

    def _queued(self) -> list:
        """Items already waiting behind the current one (none while held chunks remain)."""
        items = []
        while not self._held:
            try:
                item = self._call.inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Exception):
                raise broken(self._scrub(item.message if hasattr(item, "message") else str(item)))
            items.append(item)
            if item is END or item is None:
                break
        return items

    def result(self) -> Completion:
        """Every choice once finished, with usage."""
        texts = [[] for _ in range(self._n)]
        reasons: list[FinishReason] = [FinishReason.STOP] * self._n
        for delta in self.events():
            if 0 <= delta.index < self._n:
                texts[delta.index].append(delta.text)
                if delta.finish_reason is not None:
                    reasons[delta.index] = delta.finish_reason
        choices = tuple(Choice(i, "".join(texts[i]), (), None, reasons[i]) for i in range(self._n))
        return Completion(choices, self.usage)

    def cancel(self) -> None:
        """Stop reading and free the connection (idempotent)."""
        if not self._ended:
            self._ended = True
            self._call.cancel()
            self._on_end()

    def _next(self, idle: float | None):
        left = self._last + self._timeout - time.monotonic()
        try:
            item = self._call.inbox.get(timeout=max(0.0, left if idle is None else min(idle, left)))
        except queue.Empty:
            if time.monotonic() < self._last + self._timeout:
                return _IDLE
            raise broken(f"no data from the upstream for {self._timeout:g} s") from None
        self._last = time.monotonic()
        if isinstance(item, Exception):
            raise broken(self._scrub(item.message if hasattr(item, "message") else str(item)))
        return item

    def _chunk(self, data: dict) -> Iterator[Delta]:
        if data.get("error") is not None:
            raise broken(self._scrub(error_message(data)))
        usage = data.get("usage")
        if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
            self.usage = Usage(int(usage.get("prompt_tokens") or 0), int(usage["completion_tokens"]))
        for delta in _deltas(data, self._chat):
            if not 0 <= delta.index < self._n or self._finished[delta.index]:
                continue
            if delta.text:
                self._completion_tokens += 1
                if self.usage.completion_tokens < self._completion_tokens and not isinstance(usage, dict):
                    self.usage = Usage(self.usage.prompt_tokens, self._completion_tokens)  # until the upstream's own
            if delta.finish_reason is not None:
                self._finished[delta.index] = True
            yield delta

    def _close_choices(self) -> Iterator[Delta]:
        """[DONE] came: a choice the upstream left without finish_reason ends as stop."""
        for index, finished in enumerate(self._finished):
            if not finished:
                self._finished[index] = True
                yield Delta(index, "", finish_reason=FinishReason.STOP)


_IDLE = object()


def _merged(deltas: list[Delta]) -> list[Delta]:
    """Consecutive deltas of one choice joined (a finish ends a run)."""
    merged: list[Delta] = []
    for delta in deltas:
        last = merged[-1] if merged else None
        if last is not None and last.index == delta.index and last.finish_reason is None:
            merged[-1] = Delta(delta.index, last.text + delta.text, finish_reason=delta.finish_reason)
        else:
            merged.append(delta)
    return merged
