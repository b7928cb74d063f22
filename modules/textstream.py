"""Turn a stream of token ids into text deltas: UTF-8-safe detokenization and stop-string hold-back.

Pure Python; runs in the consumer's thread (never on the model worker).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Decode tokens one at a time, holding back text while a multi-byte character is incomplete.

    Decoding a window of recent tokens (not single tokens) keeps tokenizer-specific spacing right
    (SentencePiece's leading "▁", byte-level BPE merges), as vLLM and TGI do.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]):
        self._decode = decode
        self._ids: list[int] = []
        self._prefix_offset = 0  # start of the window decoded for context
        self._read_offset = 0  # tokens before this have been emitted as text

    def feed(self, token_id: int) -> str:
        """Add one token; return the text that is now certain (possibly empty)."""
        self._ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """Return whatever is still held back (called once, at the end)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) <= len(prefix) or (full.endswith(REPLACEMENT_CHAR) and not final):
            return ""  # nothing new yet, or a character still waits for its next byte
        new_text = full[len(prefix) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return new_text


class StopMatcher:
    """Find stop strings in streamed text; hold back any tail that could still become one."""

    def __init__(self, stops: Sequence[str]):
        self._stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self._stops), default=0)
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to emit, stopped). After a stop, the text before it is returned."""
        buf = self._held + text
        hit = self._first_stop(buf)
        if hit is not None:
            self._held = ""
            return buf[:hit], True
        keep = self._partial_tail(buf)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        """Return held text once generation ended without a stop."""
        held, self._held = self._held, ""
        return held

    @property
    def held(self) -> int:
        """Number of characters currently held back."""
        return len(self._held)

    def _first_stop(self, buf: str) -> int | None:
        positions = [i for i in (buf.find(s) for s in self._stops) if i >= 0]
        return min(positions) if positions else None

    def _partial_tail(self, buf: str) -> int:
        # The longest suffix of buf that is a proper prefix of some stop string.
        for size in range(min(len(buf), self._longest - 1), 0, -1):
            tail = buf[-size:]
            if any(s.startswith(tail) for s in self._stops):
                return size
        return 0


@dataclass
class _Pending:
    item: object
    start: int  # offset of the token's text in the decoded output
    end: int | None = None  # known once the detokenizer has emitted the token's last byte


@dataclass
class ChoiceText:
    """Per-choice text state: releases each token together with the text it produced."""

    detok: IncrementalDetokenizer
    stops: StopMatcher
    trim_start: bool = False  # drop leading spaces until the first other character
    emitted: int = 0  # chars given to the client (dropped leading spaces included, to keep offsets aligned)
    decoded: int = 0  # chars out of the detokenizer
    pending: list[_Pending] = field(default_factory=list)

    def push(self, item, token_id: int, check_stops: bool) -> tuple[str, list, bool]:
        """Feed one token; return (text to emit, token items released with it, stopped)."""
        self.pending.append(_Pending(item, self.decoded))
        return self._emit(self.detok.feed(token_id), check_stops)

    def finish(self, check_stops: bool) -> tuple[str, list, bool]:
        """Flush everything held at the end of generation."""
        text, released, stopped = self._emit(self.detok.flush(), check_stops)
        if not stopped:
            text += self._out(self.stops.flush())
            released += [p.item for p in self.pending]
            self.pending.clear()
        return text, released, stopped

    def _emit(self, piece: str, check_stops: bool) -> tuple[str, list, bool]:
        if piece:
            self.decoded += len(piece)
            for p in self.pending:
                if p.end is None:
                    p.end = self.decoded
        if check_stops:
            text, stopped = self.stops.feed(piece)
        else:  # before min_tokens stop strings do not count: emit straight through
            text, stopped = self.stops.flush() + piece, False
        text = self._out(text)
        if stopped:
            # Tokens whose text begins before the stop string go out; the stop string's own do not.
            released = [p.item for p in self.pending if p.start < self.emitted]
            self.pending.clear()
            return text, released, True
        released = []
        while self.pending and self.pending[0].end is not None and self.pending[0].end <= self.emitted:
            released.append(self.pending.pop(0).item)
        return text, released, False

    def _out(self, text: str) -> str:
        """Count `text` as given out and return what the client sees of it."""
        self.emitted += len(text)
        if self.trim_start and text:
            text = text.lstrip(" ")
            self.trim_start = not text
        return text
