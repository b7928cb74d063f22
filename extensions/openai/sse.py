"""The only place that knows the Server-Sent Events wire format."""
from __future__ import annotations

import json
import logging
from typing import Callable, Iterable, Iterator

from extensions.openai.errors import APIError, from_domain, internal
from modules.errors import HearthError

log = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"
KEEPALIVE = ": keep-alive\n\n"


def event(obj: dict) -> str:
    """One `data:` event holding a JSON object."""
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


def stream(chunks: Iterable[str], on_close: Callable[[], None]) -> Iterator[str]:
    """Yield SSE text; an error after the first byte becomes an error event, then [DONE]; always ends with DONE.

    Werkzeug closes this generator when the client goes away, so `finally` cancels the generation.
    """
    try:
        yield from chunks
    except HearthError as exc:
        yield event(from_domain(exc).to_dict())
    except APIError as exc:
        yield event(exc.to_dict())
    except Exception as exc:  # a bug: the client still gets a well-formed end of stream
        yield event(internal(exc).to_dict())
    finally:
        on_close()
    yield DONE
