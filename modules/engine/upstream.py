"""The HTTP side of an API model: its upstream members, their cool-downs, and one streamed call read by a thread.

Every call is streamed upstream (`stream: true`, usage asked for) whatever the client asked, so that Hearth can
hold an answer back until its first content arrives: until then any failure (a refused connection, a 429/408/5xx,
an error event inside the stream, a stall past `timeout`) is a `Failure` the caller may retry elsewhere; after it,
a failure ends the answer with UpstreamBroken. Tokens are read from the environment per call and sent only in the
Authorization header of the member they are configured for; they appear in no message this module makes.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator
from urllib.parse import urlsplit

from modules.errors import UpstreamBroken, UpstreamRejected

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({401, 403, 404, 408, 409, 425, 429}) | frozenset(range(500, 600))
MAX_RETRY_AFTER = 60.0  # seconds: a Retry-After longer than this is capped (a member is tried again after it)


class Failure(Exception):
    """An upstream failed before its first content: the caller may try another member or entry."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after


@dataclass
class Member:
    """One upstream server of an entry: where it is, how busy, and whether it is cooling down."""

    url: str  # the base URL up to /v1 (from the serving file only)
    in_flight: int = 0
    failures: int = 0  # consecutive
    cool_until: float = 0.0  # time.monotonic() before which the member is skipped
    last_error: str = ""
    served: int = 0

    @property
    def label(self) -> str:
        """host:port, enough to tell members apart without showing paths or query strings."""
        return urlsplit(self.url).netloc

    def cooling(self, now: float) -> bool:
        """True while the member is skipped."""
        return self.cool_until > now


class Members:
    """An entry's upstreams: each call goes to the least busy one that is not cooling down."""

    def __init__(self, urls: tuple[str, ...], cooldown: float, allowed_fails: int):
        self._members = [Member(url.rstrip("/")) for url in urls]
        self._cooldown = cooldown
        self._allowed_fails = allowed_fails
        self._lock = threading.Lock()
        self._turn = 0  # rotates ties so idle members share the traffic

    def candidates(self) -> list[Member]:
        """Members to try, in order: ready ones, least busy first; when all cool down, the first to recover."""
        now = time.monotonic()
        with self._lock:
            self._turn += 1
            count = len(self._members)
            rotated = [self._members[(self._turn + i) % count] for i in range(count)]
            ready = sorted((m for m in rotated if not m.cooling(now)), key=lambda m: m.in_flight)
            if ready:
                return ready
            return [min(self._members, key=lambda m: m.cool_until)]

    def begin(self, member: Member) -> None:
        """A call to `member` starts."""
        with self._lock:
            member.in_flight += 1

    def end(self, member: Member) -> None:
        """A call to `member` has ended (however it ended)."""
        with self._lock:
            member.in_flight -= 1

    def succeeded(self, member: Member) -> None:
        """`member` answered: its failure count starts again."""
        with self._lock:
            member.failures = 0
            member.cool_until = 0.0
            member.served += 1

    def failed(self, member: Member, failure: Failure) -> None:
        """`member` failed before content: after `allowed_fails` in a row it cools down (longer if it said so)."""
        with self._lock:
            member.failures += 1
            member.last_error = failure.message
            if member.failures >= self._allowed_fails:
                pause = max(self._cooldown, min(failure.retry_after or 0.0, MAX_RETRY_AFTER))
                member.cool_until = time.monotonic() + pause
        log.warning("upstream %s failed (%s)", member.label, failure.message)

    def states(self) -> list[dict]:
        """Each member's state for /v1/internal/health."""
        now = time.monotonic()
        with self._lock:
            return [{"upstream": m.label, "state": "cooling_down" if m.cooling(now) else "ok",
                     "cooldown_s": round(max(0.0, m.cool_until - now), 2), "in_flight": m.in_flight,
                     "consecutive_failures": m.failures, "served": m.served, "last_error": m.last_error or None}
                    for m in self._members]  # fmt: skip


@dataclass
class Chunk:
    """One parsed event of an upstream stream: a JSON chunk, or the end ([DONE])."""

    data: dict[str, Any] | None  # None: [DONE]


END = Chunk(None)


@dataclass
class Call:
    """One streamed upstream call, read by its own thread into `inbox` (Chunk, Exception, or None at the end)."""

    member: Member
    inbox: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    response: Any = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Stop reading and close the connection (any thread)."""
        self.cancelled.set()
        response = self.response
        if response is not None:
            try:
                response.close()
            except Exception:  # closing from another thread may race the reader; it ends either way
                pass


def start_call(client, member: Member, path: str, body: dict, headers: dict[str, str]) -> Call:
    """POST `body` to `member`'s `path` in a reader thread; chunks arrive in the call's inbox."""
    call = Call(member)
    threading.Thread(target=_read, args=(client, call, path, body, headers), daemon=True,
                     name=f"upstream-{member.label}").start()  # fmt: skip
    return call


def _read(client, call: Call, path: str, body: dict, headers: dict[str, str]) -> None:
    import httpx

    try:
        with client.stream("POST", call.member.url + path, json=body, headers=headers) as response:
            call.response = response
            if response.status_code != 200:
                response.read()
                call.inbox.put(status_error(response))
                return
            for chunk in sse_chunks(response.iter_lines()):
                if call.cancelled.is_set():
                    return
                call.inbox.put(chunk)
                if chunk is END:
                    return
            call.inbox.put(None)  # the connection ended (with or without [DONE]; the consumer decides)
    except httpx.TimeoutException:
        call.inbox.put(Failure("the upstream did not answer in time (timeout)", status=408))
    except (httpx.HTTPError, OSError) as exc:
        if not call.cancelled.is_set():
            call.inbox.put(Failure(f"cannot reach the upstream ({type(exc).__name__})"))
    except Exception as exc:  # a malformed stream: the consumer ends the answer with an error
        call.inbox.put(Failure(f"the upstream sent a malformed stream ({type(exc).__name__})"))


def sse_chunks(lines: Iterator[str]) -> Iterator[Chunk]:
    """Parsed `data:` events (multi-line data joined); comments and other fields skipped."""
    data: list[str] = []
    for line in lines:
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
            continue
        if line == "" and data:
            text = "\n".join(data)
            data = []
            yield END if text.strip() == "[DONE]" else Chunk(json.loads(text))
    if data:
        text = "\n".join(data)
        yield END if text.strip() == "[DONE]" else Chunk(json.loads(text))


def status_error(response) -> Exception:
    """The Failure (retryable status) or UpstreamRejected (the client's mistake) for a non-200 answer."""
    status = response.status_code
    message = error_message(response.content) or f"HTTP {status}"
    if status in RETRYABLE_STATUS:
        return Failure(f"HTTP {status}: {message}", status=status, retry_after=_retry_after(response))
    if 400 <= status < 500:
        param = _error_param(response.content)
        return UpstreamRejected(f"the upstream refused the request: {message}", status=status, param=param)
    return Failure(f"HTTP {status}: {message}", status=status)


def error_message(raw: bytes | dict | None) -> str:
    """The message of an OpenAI-shaped error body (or event), else a short excerpt of the body."""
    data = raw
    if isinstance(raw, (bytes, str)):
        try:
            data = json.loads(raw)
        except ValueError:
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            return " ".join(text.split())[:200]
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            return str(error.get("message") or error.get("detail") or error.get("type") or "")[:500]
        return str(error)[:500]
    return ""


def _error_param(raw: bytes) -> str | None:
    try:
        error = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        return None
    param = error.get("param") if isinstance(error, dict) else None
    return param if isinstance(param, str) else None


def _retry_after(response) -> float | None:
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None


def broken(message: str) -> UpstreamBroken:
    """The error that ends an answer already under way."""
    return UpstreamBroken(f"the upstream failed during the answer: {message}")
