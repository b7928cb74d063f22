"""Per-app state and request helpers shared by the route modules."""
from __future__ import annotations

import functools
import json
import logging
import threading
from dataclasses import dataclass
from typing import Callable, TypeVar

from flask import Flask, current_app, g, request
from pydantic import BaseModel, ValidationError

from extensions.openai.errors import APIError, from_validation
from modules.engine.base import Engine

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
R = TypeVar("R")
KEEPALIVE_SECONDS = 10.0


@dataclass(frozen=True)
class ApiConfig:
    """The API's own settings, resolved once in create_app()."""

    api_key: str = ""
    admin_key: str = ""
    listen: bool = False
    strict: bool = False
    max_body_bytes: int = 8 * 1024 * 1024
    debug: bool = False
    keepalive: float = KEEPALIVE_SECONDS


class ApiState:
    """What every route needs: the runtime, the API config, and the embedding models (loaded on first use)."""

    def __init__(self, runtime, config: ApiConfig, embeddings):
        self.runtime = runtime
        self.config = config
        self.embeddings = embeddings  # modules.embeddings.EmbeddingModels
        self._moderator = None
        self._lock = threading.Lock()

    def moderator(self):
        """The moderation scorer over the default embedding model (built once)."""
        from modules.moderation import Moderator

        with self._lock:
            if self._moderator is None:
                self._moderator = Moderator(self.embeddings.get(None))
            return self._moderator


def state() -> ApiState:
    """The ApiState of the current app."""
    return current_app.extensions["hearth"]


def json_body() -> dict:
    """The request body as a JSON object; 400 for invalid UTF-8, invalid JSON or a non-object."""
    raw = request.get_data(cache=True)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise APIError(400, "the request body is not valid UTF-8") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise APIError(400, f"the request body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    return data


def parse(model: type[M]) -> M:
    """Validate the JSON body into `model`; 400 naming the first bad field."""
    try:
        return model.model_validate(json_body())
    except ValidationError as exc:
        raise from_validation(exc) from None


def serving_engine(requested: str | None) -> Engine:
    """The engine of the pool entry that answers a request naming `requested` (404 for an unknown name)."""
    return state().runtime.pool.route(requested).engine


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def install_arrivals(app: Flask, endpoints: frozenset[str]) -> None:
    """Keep the scheduler's count of generation requests on their way (Scheduler.expect) from their arrival.

    The HTTP server announces every connection as it comes in (environ["hearth.arrival"]); a request to one of
    `endpoints` keeps it until `announced` submits, any other request drops it here, before its view runs."""

    @app.before_request
    def keep_or_drop() -> None:
        arrival = request.environ.pop("hearth.arrival", None)
        if request.endpoint in endpoints:
            g.hearth_arrival = arrival or state().runtime.scheduler.expect()
        elif arrival is not None:
            arrival.done()

    @app.teardown_request
    def release(_exc) -> None:
        arrival = g.pop("hearth_arrival", None)
        if arrival is not None:
            arrival.done()


def announced(start: Callable[..., R]) -> Callable[..., R]:
    """`start(st, ...)` announced to the scheduler until it has submitted (or failed): see Scheduler.expect.

    HTTP requests are announced from their arrival (install_arrivals); a WebSocket message from here."""

    @functools.wraps(start)
    def wrapper(st, *args, **kwargs):
        arrival = g.pop("hearth_arrival", None) or st.runtime.scheduler.expect()
        try:
            return start(st, *args, **kwargs)
        finally:
            arrival.done()

    return wrapper
