"""Logging configuration: one format, and secrets (API keys) never written to any log."""
from __future__ import annotations

import logging
from typing import Iterable


class RedactSecrets(logging.Filter):
    """Replace configured secrets in log messages and arguments with '***'."""

    def __init__(self, secrets: Iterable[str]):
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            for secret in self.secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, ()
        return True


def configure_logging(verbose: bool = False) -> None:
    """Log to stderr with time and level; quiet noisy libraries."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "urllib3", "matplotlib", "PIL", "filelock", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def redact(secrets: Iterable[str]) -> None:
    """Install the redaction filter on every root handler."""
    filt = RedactSecrets(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(filt)
