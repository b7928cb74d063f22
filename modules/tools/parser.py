"""Reading tool calls out of a reply as it streams: content text, call starts, argument fragments.

The parser decides only on text it has seen in full (it holds back what may still become a call's markup), so the
events it gives for a reply fed in any pieces add up to the events for the whole reply fed at once; the
non-streamed response is built from the same events. A call the model starts but does not write as
{"name": "<a tool>", "arguments": {...}} stays content; the markup of a recognised call never becomes content.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Callable, Iterable, Union

from modules.tools.formats import CallFormat

WS = " \t\r\n"
WAIT, FAIL = "wait", "fail"


@dataclass(frozen=True)
class CallStart:
    """A call begins: its index in the reply, id and function name."""

    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ArgsPart:
    """More of a call's arguments (JSON text, exactly as the model wrote it)."""

    index: int
    text: str


Event = Union[str, CallStart, ArgsPart]  # a str is content


@dataclass
class ParsedReply:
    """A reply's content and calls, put together from parser events."""

    content: str = ""
    calls: list[dict] = field(default_factory=list)  # {"id", "name", "arguments"}

    def add(self, events: Iterable[Event]) -> None:
        """Fold events in."""
        for ev in events:
            if isinstance(ev, str):
                self.content += ev
            elif isinstance(ev, CallStart):
                self.calls.append({"id": ev.id, "name": ev.name, "arguments": ""})
            else:
                self.calls[ev.index]["arguments"] += ev.text


def new_call_id() -> str:
    """An id like OpenAI's (call_ and 24 random characters)."""
    return "call_" + secrets.token_hex(12)


class ToolCallParser:
    """Incremental parser for one choice's reply in one CallFormat."""

    def __init__(self, fmt: CallFormat, names: Iterable[str], make_id: Callable[[], str] = new_call_id):
        self.fmt = fmt
        self.names = frozenset(names)
        self.make_id = make_id
        self.calls = 0
        self._buf = ""
        self._state = "text"
        self._seen_text = False  # content before any call (a bare-JSON format's call must come first)
        self._scan = _ArgsScanner()
        self._quiet = False  # whitespace after the last call is dropped, not content
        self._start = fmt.start.strip()
        self._between = fmt.between.strip()
        self._call_end = fmt.call_end.strip()
        self._end = fmt.end.strip()

    def feed(self, text: str) -> list[Event]:
        """Events for newly generated text."""
        self._buf += text
        return self._run(final=False)

    def finish(self) -> list[Event]:
        """Events for what was held back, at the end of the reply."""
        return self._run(final=True)

    # ---- states ---------------------------------------------------------------------------------------
    def _run(self, final: bool) -> list[Event]:
        out: list[Event] = []
        while True:
            step = getattr(self, f"_in_{self._state}")(out, final)
            if not step:
                return [e for e in out if not (isinstance(e, str) and not e)]

    def _in_text(self, out: list, final: bool) -> bool:
        buf = self._buf
        if not self._start:  # bare JSON: a call is the whole reply, from its first character
            rest = buf.lstrip(WS)
            if self._seen_text or (rest and rest[0] != "{"):
                return self._go_plain(out)
            if not rest:
                if final:
                    return self._go_plain(out)
                return False
            self._state = "head"
            return True
        at = buf.find(self._start)
        if at >= 0:
            self._emit_text(out, buf[:at])
            self._buf = buf[at + len(self._start) :]
            self._state = "head"
            return True
        keep = 0 if final else _held(buf, self._start)
        self._emit_text(out, buf[: len(buf) - keep])
        self._buf = buf[len(buf) - keep :]
        return False

    def _in_head(self, out: list, final: bool) -> bool:
        result = _head(self._buf, self.names)
        if result == WAIT and not final:
            return False
        if result in (WAIT, FAIL):  # not a call after all: what was taken for its opening is content
            if self.calls == 0 and self._start:
                self._emit_text(out, self._start)
                self._state = "text"  # look for the opening again in what follows
                return True
            self._buf = (self._between if self.calls else "") + self._buf
            return self._go_plain(out)
        name, end = result
        out.append(CallStart(self.calls, self.make_id(), name))
        self._buf = self._buf[end:]
        self._scan = _ArgsScanner()
        self._state = "args"
        return True

    def _in_args(self, out: list, final: bool) -> bool:
        used = self._scan.feed(self._buf)
        if used:
            out.append(ArgsPart(self.calls, self._buf[:used]))
        self._buf = self._buf[used:]
        if not self._scan.closed:
            return False
        self.calls += 1
        self._state = "tail"
        return True

    def _in_tail(self, out: list, final: bool) -> bool:
        result = _expect(self._buf, ["}", self._call_end])
        if result == WAIT and not final:
            return False
        if result in (WAIT, FAIL):
            return self._go_plain(out)
        self._buf = self._buf[result:]
        self._state = "between"
        return True

    def _in_between(self, out: list, final: bool) -> bool:
        rest = self._buf.lstrip(WS)
        if self._end and rest.startswith(self._end):
            self._buf = rest[len(self._end) :]
            return self._go_plain(out, quiet_space=True)
        opener = self._between or "{"
        if rest.startswith(opener):
            self._buf = rest[len(opener) :] if self._between else rest
            self._state = "head"
            return True
        if not final and (not rest or opener.startswith(rest) or (self._end and self._end.startswith(rest))):
            return False
        if not rest.strip(WS):
            self._buf = ""
            return False
        self._buf = rest
        return self._go_plain(out)

    def _in_plain(self, out: list, final: bool) -> bool:
        if self._quiet and not self._buf.strip(WS):
            if final:
                self._buf = ""
            return False  # whitespace after the calls is no content
        self._quiet = False
        self._emit_text(out, self._buf)
        self._buf = ""
        return False

    def _go_plain(self, out: list, quiet_space: bool = False) -> bool:
        self._state = "plain"
        self._quiet = quiet_space or self.calls > 0
        return True

    def _emit_text(self, out: list, text: str) -> None:
        if text:
            out.append(text)
            if text.strip(WS):
                self._seen_text = True


class _ArgsScanner:
    """Finds where a JSON value that starts with "{" ends, across pieces."""

    def __init__(self):
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.closed = False

    def feed(self, text: str) -> int:
        """Characters of `text` that belong to the value (all of it until the value closes)."""
        for i, ch in enumerate(text):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.closed = True
                    return i + 1
        return len(text)


def _held(text: str, marker: str) -> int:
    """Length of the longest end of `text` that could be the start of `marker`."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


def _expect(text: str, pieces: list[str]) -> int | str:
    """Match `pieces` in order, whitespace allowed around each: the end index, WAIT or FAIL."""
    i = 0
    for piece in pieces:
        while i < len(text) and text[i] in WS:
            i += 1
        if not piece:
            continue
        chunk = text[i : i + len(piece)]
        if chunk != piece[: len(chunk)]:
            return FAIL
        if len(chunk) < len(piece):
            return WAIT
        i += len(piece)
    return i


def _head(text: str, names: frozenset[str]):
    """{"name": "<a tool>", "arguments" (or "parameters"): up to the arguments' "{": (name, end), WAIT or FAIL."""
    at = _expect(text, ["{", '"name"', ":", '"'])
    if isinstance(at, str):
        return at
    name, i = _json_string(text, at)
    if name is None:
        return i  # WAIT or FAIL
    if name not in names:
        return FAIL
    after = _expect(text[i:], [","])
    if isinstance(after, str):
        return after
    i += after
    keys = [_expect(text[i:], [f'"{key}"', ":", "{"]) for key in ("arguments", "parameters")]
    done = [k for k in keys if isinstance(k, int)]
    if done:
        return name, i + done[0] - 1  # at the arguments' "{"
    return WAIT if WAIT in keys else FAIL


def _json_string(text: str, start: int):
    """The JSON string whose opening quote is just before `start`: (value, index after it) or (None, WAIT/FAIL)."""
    import json

    i, escaped = start, False
    while i < len(text):
        ch = text[i]
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            try:
                return json.loads(text[start - 1 : i + 1]), i + 1
            except ValueError:
                return None, FAIL
        elif ch == "\n":
            return None, FAIL
        i += 1
    return None, WAIT
