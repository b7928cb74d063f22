"""Discover and start extensions: extensions/<name>/script.py with `params` and `setup(ctx)`."""
from __future__ import annotations

import importlib
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from modules.errors import SettingsError

log = logging.getLogger(__name__)

NAME = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass(frozen=True)
class ExtensionContext:
    """What an extension's setup() receives."""

    name: str
    runtime: Any  # modules.runtime.Runtime
    params: Mapping[str, Any]  # script.params overlaid with settings.yaml's values
    logger: logging.Logger


def enabled_extensions(settings) -> list[str]:
    """Names from --extensions, plus 'openai' when --api is given; duplicates removed, order kept."""
    names = list(settings.server.extensions)
    if settings.server.api:
        names.append("openai")
    return list(dict.fromkeys(names))


def load_extension(name: str, runtime) -> Callable[[], None] | None:
    """Import extensions/<name>/script.py and run its setup(); returns its stop function, if any."""
    if not NAME.match(name):
        raise SettingsError(f"invalid extension name {name!r}")
    try:
        script = importlib.import_module(f"extensions.{name}.script")
    except ModuleNotFoundError as exc:
        if exc.name in (f"extensions.{name}", f"extensions.{name}.script"):
            raise SettingsError(f"extension {name!r} not found in extensions/") from None
        raise
    params = {**getattr(script, "params", {}), **runtime.settings.extensions.get(name, {})}
    setup = getattr(script, "setup", None)
    if setup is None:
        return None
    ctx = ExtensionContext(name, runtime, params, logging.getLogger(f"extensions.{name}"))
    return setup(ctx)
