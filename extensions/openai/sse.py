"""The only place that knows the Server-Sent Events wire format."""
from __future__ import annotations

import json
import logging
import re
from typing import Callable, Iterable, Iterator

from extensions.openai.errors import APIError, from_domain, internal
from modules.errors import HearthError

log = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"
KEEPALIVE = ": keep-alive\n\n"
LINE_BREAK = re.compile(r"\r\n|\r|\n")  # what ends a line in an event stream


def event(obj: dict) -> str:
    """One `data:` event holding a JSON object."""
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


def text_event(text: str, name: str | None = None) -> str:
    """An event whose data is raw text, not JSON: one `data:` line per line, which clients join with newlines."""
    head = f"event: {name}\n" if name else ""
    return head + "".join(f"data: {line}\n" for line in LINE_BREAK.split(text)) + "\n"


def stream(chunks: Iterable[str], on_close: Callable[[], None]) -> Iterator[str]:
    """Yield SSE text; an error after the first byte becomes an error event, then [DONE]; always ends with DONE.

    Werkzeug closes this generator when the client goes away, so `finally` cancels the generation.
    """
    yield from guarded(chunks, on_close, lambda error: event(error.to_dict()))
    yield DONE


def guarded(chunks: Iterable[str], on_close: Callable[[], None], on_error: Callable[[APIError], str]) -> Iterator[str]:
    """Yield `chunks`; an error raised meanwhile ends them with on_error(its API error); on_close() always runs."""
    try:
        yield from chunks
    except HearthError as exc:
        yield on_error(from_domain(exc))
    except APIError as exc:
        yield on_error(exc)
    except Exception as exc:  # a bug: the client still gets a well-formed end of stream
        yield on_error(internal(exc))
    finally:
        on_close()
