"""The consumer side of one generation: turns the worker's token events into text deltas.

Runs in the caller's thread (an HTTP request thread or the UI), so detokenizing and stop-string matching never
slow the model worker.
"""
from __future__ import annotations

import queue
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from modules.errors import GenerationFailed, HearthError
from modules.generation import Choice, Completion, Delta, FinishReason, GenerationRequest, TokenLogprob, Usage
from modules.loaders.base import TokenEvent
from modules.textstream import ChoiceText, IncrementalDetokenizer, StopMatcher


@dataclass(frozen=True)
class TokenItem:
    """Worker -> handle: a generated token; `is_stop_token` when it ended the choice (EOS, stop id)."""

    index: int
    event: TokenEvent
    is_stop_token: bool = False


@dataclass(frozen=True)
class FinishItem:
    """Worker -> handle: a choice ended (length, stop token, cancelled)."""

    index: int
    reason: FinishReason


@dataclass(frozen=True)
class ErrorItem:
    """Worker -> handle: the generation failed."""

    error: HearthError


class Handle:
    """A submitted generation: iterate `events()` (or call `result()`); `cancel()` from any thread."""

    def __init__(
        self,
        request: GenerationRequest,
        seq_ids: Sequence[int],
        decode: Callable[[Sequence[int], bool], str],
        cancel: Callable[[Sequence[int]], None],
    ):
        self.request = request
        self.seq_ids = tuple(seq_ids)
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._cancel_seqs = cancel
        skip = request.skip_special_tokens
        self._choices = [
            ChoiceText(IncrementalDetokenizer(lambda ids: decode(ids, skip)), StopMatcher(request.stop),
                       trim_start=request.trim_leading_space)
            for _ in self.seq_ids
        ]
        self._counts = [0] * len(self.seq_ids)
        self._done = [False] * len(self.seq_ids)
        self.usage = Usage(len(request.prompt_ids), 0)

    def cancel(self) -> None:
        """Stop every unfinished choice; the worker frees them before its next step."""
        live = [sid for sid, done in zip(self.seq_ids, self._done) if not done]
        if live:
            self._cancel_seqs(live)

    def events(self, idle: float | None = None) -> Iterator[Delta | None]:
        """Text deltas as they come; each choice's last delta carries its finish_reason.

        With `idle`, yields None whenever nothing arrived for that many seconds (for keep-alives).
        """
        try:
            while not all(self._done):
                try:
                    item = self.inbox.get(timeout=idle)
                except queue.Empty:
                    yield None
                    continue
                if isinstance(item, ErrorItem):
                    raise item.error
                if self._done[item.index]:
                    continue  # a token the worker made before it saw our stop
                delta = self._token(item) if isinstance(item, TokenItem) else self._finish(item.index, item.reason)
                if delta is not None:
                    yield delta
        finally:
            self.cancel()  # no-op when all finished; frees the batch slots when the caller went away

    def result(self) -> Completion:
        """Run to the end and return every choice with usage."""
        texts = [[] for _ in self.seq_ids]
        tokens: list[list[int]] = [[] for _ in self.seq_ids]
        logprobs: list[list[TokenLogprob]] = [[] for _ in self.seq_ids]
        reasons: list[FinishReason | None] = [None] * len(self.seq_ids)
        for delta in self.events():
            texts[delta.index].append(delta.text)
            tokens[delta.index].extend(delta.token_ids)
            logprobs[delta.index].extend(delta.logprobs)
            if delta.finish_reason is not None:
                reasons[delta.index] = delta.finish_reason
        wants_logprobs = self.request.logprobs is not None
        choices = tuple(
            Choice(i, "".join(texts[i]), tuple(tokens[i]), tuple(logprobs[i]) if wants_logprobs else None, reasons[i])
            for i in range(len(self.seq_ids))
        )
        return Completion(choices, self.usage)

    def _token(self, item: TokenItem) -> Delta | None:
        index = item.index
        self._counts[index] += 1
        self.usage = Usage(self.usage.prompt_tokens, self.usage.completion_tokens + 1)
        if item.is_stop_token:
            return None  # the FinishItem that follows ends the choice; EOS text is never shown
        check = self._counts[index] >= self.request.min_tokens
        text, released, stopped = self._choices[index].push(item.event, item.event.token_id, check)
        if stopped:
            self._done[index] = True
            self._cancel_seqs([self.seq_ids[index]])
            return _delta(index, text, released, FinishReason.STOP)
        if text or released:
            return _delta(index, text, released, None)
        return None

    def _finish(self, index: int, reason: FinishReason) -> Delta:
        check = self._counts[index] >= self.request.min_tokens
        text, released, stopped = self._choices[index].finish(check)
        self._done[index] = True
        return _delta(index, text, released, FinishReason.STOP if stopped else reason)


def _delta(index: int, text: str, released: list, reason: FinishReason | None) -> Delta:
    ids = tuple(ev.token_id for ev in released)
    logprobs = tuple(ev.logprob for ev in released if ev.logprob is not None)
    return Delta(index, text, ids, logprobs, reason)


def failed(message: str) -> ErrorItem:
    """An ErrorItem for a model-side failure."""
    return ErrorItem(GenerationFailed(message))
