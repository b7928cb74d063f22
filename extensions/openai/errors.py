"""One error shape everywhere: {"error": {"message", "type", "param", "code"}}, with the right status."""
from __future__ import annotations

import logging

from modules import errors as domain

log = logging.getLogger(__name__)

# domain error -> (HTTP status, OpenAI error type, code)
STATUS = {
    domain.InvalidParameter: (400, "invalid_request_error", None),
    domain.TemplateNotFound: (400, "invalid_request_error", "template_not_found"),
    domain.TemplateError: (400, "invalid_request_error", "template_error"),
    domain.CharacterNotFound: (400, "invalid_request_error", "character_not_found"),
    domain.ModelNotFound: (404, "invalid_request_error", "model_not_found"),
    domain.ContextTooLong: (413, "invalid_request_error", "context_length_exceeded"),
    domain.ModelLoadError: (400, "invalid_request_error", "model_load_failed"),
    domain.ModelNotLoaded: (503, "server_error", "model_not_loaded"),
    domain.ModelChanged: (503, "server_error", "model_changed"),
    domain.QueueFull: (503, "server_error", "queue_full"),
    domain.ServerShuttingDown: (503, "server_error", "shutting_down"),
    domain.GenerationFailed: (503, "server_error", "generation_failed"),
    domain.UpstreamRejected: (400, "invalid_request_error", "upstream_rejected"),
    domain.UpstreamFailed: (502, "server_error", "upstream_failed"),
    domain.UpstreamBroken: (502, "server_error", "upstream_broken"),
}

RETRY_AFTER = {domain.QueueFull: "1", domain.ModelChanged: "1", domain.ModelNotLoaded: "5", domain.GenerationFailed: "1",
               domain.UpstreamFailed: "5"}


class APIError(Exception):
    """An error answered to the client in OpenAI's shape."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers: dict[str, str] = {}

    def to_dict(self) -> dict:
        """The JSON body."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def from_domain(exc: domain.HearthError) -> APIError:
    """Map a domain error to its HTTP answer."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            status, kind, code = STATUS[cls]
            break
    else:
        status, kind, code = 500, "server_error", None
    if isinstance(exc, domain.UpstreamRejected):  # the upstream's own 4xx (400, 413, 422) passes through
        status = exc.status
    elif isinstance(exc, domain.UpstreamFailed) and exc.rate_limited:
        status = 503
    error = APIError(status, exc.message, kind, exc.param, code)
    if type(exc) in RETRY_AFTER:
        error.headers["Retry-After"] = RETRY_AFTER[type(exc)]
    return error


def from_validation(exc) -> APIError:
    """A pydantic ValidationError as a 400 naming the first bad field like OpenAI (`messages[0].content`)."""
    err = exc.errors()[0]
    param = _param_path(err.get("loc", ()))
    message = err.get("msg", "invalid value")
    if err.get("type") == "missing":
        message = f"missing required parameter: '{param}'"
    elif err.get("type") == "extra_forbidden":
        message = f"unrecognized request argument supplied: {param}"
    elif param:
        message = f"invalid value for '{param}': {message}"
    return APIError(400, message, param=param or None)


def internal(exc: BaseException) -> APIError:
    """A bug: log the traceback, tell the client only that it happened."""
    log.error("unhandled error", exc_info=exc)
    return APIError(500, "the server had an error while processing your request", "server_error")


def _param_path(loc) -> str:
    # pydantic's union branch names (e.g. "str", "list[...]", "function-after[...]") are not fields.
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            if parts:
                parts[-1] += f"[{item}]"
        elif "[" in str(item) or str(item) in {"str", "int", "float", "bool", "list", "dict", "none"}:
            continue
        else:
            parts.append(str(item))
    return ".".join(parts)
