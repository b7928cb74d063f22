"""The consumer side of one generation: turns the worker's token events into text deltas.

Runs in the caller's thread (an HTTP request thread or the UI), so detokenizing and stop-string matching never
slow the model worker.
"""
from __future__ import annotations

import queue
import threading
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
    batch: int = 1  # sequences that got a token in the step that made this one (the load, for stream pacing)


@dataclass(frozen=True)
class FinishItem:
    """Worker -> handle: a choice ended (length, stop token, cancelled)."""

    index: int
    reason: FinishReason


@dataclass(frozen=True)
class ErrorItem:
    """Worker -> handle: the generation failed."""

    error: HearthError


@dataclass(frozen=True)
class Pacing:
    """Under load, a stream takes its tokens at most once per `interval` seconds, each time all that came meanwhile.

    Waking the consumer for every token of every stream costs the model worker CPU: on 2 cores at 8 streams,
    decode steps took ~10-15% longer with per-token wake-ups than without. The first token and the end of a
    stream are never held back."""

    interval: float = 0.0  # 0: one wake-up (and one delta) per token
    min_batch: int = 4  # paced only while a step serves at least this many sequences


class Handle:
    """A submitted generation: iterate `events()` (or call `result()`); `cancel()` from any thread."""

    def __init__(
        self,
        request: GenerationRequest,
        seq_ids: Sequence[int],
        decode: Callable[[Sequence[int], bool], str],
        cancel: Callable[[Sequence[int]], None],
        pacing: Pacing = Pacing(),
    ):
        self.request = request
        self.seq_ids = tuple(seq_ids)
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.pacing = pacing
        self._urgent = threading.Event()  # set with every item that ends a choice, so a paced wait ends at once
        self._cancel_seqs = cancel
        skip = request.skip_special_tokens
        self._choices = [
            ChoiceText(IncrementalDetokenizer(lambda ids: decode(ids, skip)), StopMatcher(request.stop),
                       trim_start=request.trim_leading_space)
            for _ in self.seq_ids
        ]
        self._counts = [0] * len(self.seq_ids)
        self._done = [False] * len(self.seq_ids)
        self._stop_logprobs: list[TokenLogprob | None] = [None] * len(self.seq_ids)  # the EOS/stop id's, if asked
        self.usage = Usage(len(request.prompt_ids), 0)

    @property
    def n(self) -> int:
        """How many choices this generation has."""
        return len(self.seq_ids)

    @property
    def wants_logprobs(self) -> bool:
        """True when the deltas carry logprobs."""
        return self.request.logprobs is not None

    def cancel(self) -> None:
        """Stop every unfinished choice; the worker frees them before its next step."""
        live = [sid for sid, done in zip(self.seq_ids, self._done) if not done]
        if live:
            self._cancel_seqs(live)

    def deliver(self, item: TokenItem | FinishItem | ErrorItem) -> None:
        """Worker -> consumer: queue one item (any thread)."""
        self.inbox.put(item)
        if not isinstance(item, TokenItem) or item.is_stop_token:
            self._urgent.set()

    def events(self, idle: float | None = None) -> Iterator[Delta | None]:
        """Text deltas as they come; each choice's last delta carries its finish_reason.

        With `idle`, yields None whenever nothing arrived for that many seconds (for keep-alives). Under load
        (see Pacing) one delta may carry several tokens.
        """
        try:
            paced = False
            while not all(self._done):
                if paced:  # tokens queue up meanwhile without waking this thread; a finish or error ends the wait
                    self._urgent.wait(self.pacing.interval)
                    self._urgent.clear()
                items = self._take(idle)
                if not items:
                    yield None
                    continue
                deltas, error = self._deltas(items)
                yield from deltas
                if error is not None:
                    raise error
                paced = self.pacing.interval > 0 and any(
                    isinstance(i, TokenItem) and i.batch >= self.pacing.min_batch for i in items
                )
        finally:
            self.cancel()  # no-op when all finished; frees the batch slots when the caller went away

    def _take(self, idle: float | None) -> list:
        """The next item (waiting up to `idle`; [] if none came) and every item queued behind it."""
        try:
            items = [self.inbox.get(timeout=idle)]
        except queue.Empty:
            return []
        while True:
            try:
                items.append(self.inbox.get_nowait())
            except queue.Empty:
                return items

    def _deltas(self, items: list) -> tuple[list[Delta], HearthError | None]:
        """Deltas for `items`, consecutive ones of a choice merged; and the error that ended them, if one did."""
        deltas: list[Delta] = []
        for item in items:
            if isinstance(item, ErrorItem):
                return deltas, item.error
            if self._done[item.index]:
                continue  # a token the worker made before it saw our stop
            delta = self._token(item) if isinstance(item, TokenItem) else self._finish(item.index, item.reason)
            if delta is None:
                continue
            last = deltas[-1] if deltas else None
            if last is not None and last.index == delta.index and last.finish_reason is None:
                delta = Delta(delta.index, last.text + delta.text, last.token_ids + delta.token_ids,
                              last.logprobs + delta.logprobs, delta.finish_reason)  # fmt: skip
                deltas[-1] = delta
            else:
                deltas.append(delta)
        return deltas, None

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
        if item.is_stop_token:  # the FinishItem that follows ends the choice; EOS text is never shown, but its
            self._stop_logprobs[index] = item.event.logprob  # logprob is (lm-eval scores with it), after the text's
            return None
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
        delta = _delta(index, text, released, FinishReason.STOP if stopped else reason)
        stop_logprob = self._stop_logprobs[index]
        if stop_logprob is None:
            return delta
        return Delta(index, delta.text, delta.token_ids, delta.logprobs + (stop_logprob,), delta.finish_reason)


def _delta(index: int, text: str, released: list, reason: FinishReason | None) -> Delta:
    ids = tuple(ev.token_id for ev in released)
    logprobs = tuple(ev.logprob for ev in released if ev.logprob is not None)
    return Delta(index, text, ids, logprobs, reason)


def failed(message: str) -> ErrorItem:
    """An ErrorItem for a model-side failure."""
    return ErrorItem(GenerationFailed(message))
