"""Domain errors shared by every layer; adapters (HTTP, UI, CLI) map them to their own shapes."""
from __future__ import annotations


class HearthError(Exception):
    """Base class: `message` is safe to show to a user; `param` names the offending input, if any."""

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidParameter(HearthError):
    """A request value is out of range or of the wrong kind."""


class ModelNotFound(HearthError):
    """No model of that name exists in the models folder (or the name escapes it)."""


class ModelNotLoaded(HearthError):
    """A generation was asked for while no model is loaded."""


class ModelLoadError(HearthError):
    """A model folder is corrupt, incomplete, or needs a loader that is not installed."""


class ModelChanged(HearthError):
    """The model was swapped between tokenizing a request and running it."""


class ContextTooLong(HearthError):
    """The prompt does not fit the model's context window."""


class QueueFull(HearthError):
    """The scheduler's waiting queue is at its limit; retry later."""


class ServerShuttingDown(HearthError):
    """The scheduler is closed and takes no more work."""


class TemplateNotFound(HearthError):
    """No instruction template of that name exists."""


class TemplateError(HearthError):
    """An instruction template failed to parse or render (including sandbox violations)."""


class CharacterNotFound(HearthError):
    """No character of that name exists."""


class GenerationFailed(HearthError):
    """The model raised while generating; the request ends with this error."""


class SettingsError(HearthError):
    """settings.yaml or a command-line value is invalid."""


class UpstreamRejected(HearthError):
    """An API model's upstream refused the request as the client's mistake (its 4xx); passed back, no fallback."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None):
        super().__init__(message, param=param)
        self.status = status


class UpstreamFailed(HearthError):
    """Every upstream that could answer failed before its first content (down, rate-limited, timed out)."""

    def __init__(self, message: str, *, rate_limited: bool = False):
        super().__init__(message)
        self.rate_limited = rate_limited


class UpstreamBroken(HearthError):
    """An upstream failed after its answer had started; the client gets an error, never a truncated answer."""
