#!/usr/bin/env python3
"""Hearth: a local language-model server with a browser chat UI and an OpenAI-compatible API.

main() builds everything and passes it down; nothing happens at import time.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent

log = logging.getLogger("hearth")


def main(argv: list[str] | None = None) -> int:
    """Parse flags, build the runtime, load the model, start extensions and the UI, wait for Ctrl-C."""
    from modules.cli import overrides_from_args, parse_args

    args = parse_args(argv)  # exits 2 on a bad flag; --help exits here, before any heavy import
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from modules.errors import HearthError
    from modules.logging_setup import configure_logging, redact

    configure_logging(getattr(args, "verbose", False))
    try:
        settings = _settings(args, overrides_from_args(args))
        redact([settings.server.api_key, settings.server.admin_key])
        runtime, stops = _start(settings)
    except HearthError as exc:
        sys.stderr.write(f"server.py: error: {exc.message}\n")
        return 2
    try:
        _wait_for_signal()
    finally:
        log.info("Shutting down")
        for stop in reversed(stops):
            stop()
        runtime.close()
    return 0


def _settings(args, overrides):
    from modules.config import load_settings
    from modules.errors import SettingsError

    given = getattr(args, "settings", None)
    path = Path(given) if given else (ROOT / "settings.yaml")
    settings = load_settings(path if (given or path.is_file()) else None, overrides, root=ROOT)
    model_dir = settings.path(settings.model.model_dir)
    if not model_dir.is_dir():
        raise SettingsError(f"model folder {model_dir} not found (use --model-dir)")
    return settings


def _start(settings):
    from modules.extensions import enabled_extensions, load_extension
    from modules.runtime import DEMO_MODEL, build_runtime

    serving = _serving(settings)
    if serving is not None:  # upstream tokens never reach a log line
        from modules.logging_setup import redact

        redact([spec.token() for spec in serving.entries if getattr(spec, "api_key_env", "")])
    runtime = build_runtime(settings, serving)
    stops = []
    try:
        _check_character(runtime)
        name = runtime.models.default_name()
        if serving is not None:
            runtime.pool.load_all()
        elif name is None:
            log.info("No model loaded: several are in %s; pick one with --model or in the UI", settings.model.model_dir)
        else:
            if name == DEMO_MODEL and not settings.model.model:
                log.info(
                    "No model in %s: serving the built-in demo model %s. For a real model run: "
                    "python download-model.py ORG/NAME",
                    settings.model.model_dir, DEMO_MODEL,
                )
            runtime.models.load(name)
        for ext in enabled_extensions(settings):
            stop = load_extension(ext, runtime)
            if stop is not None:
                stops.append(stop)
        if not settings.server.nowebui:
            stops.append(_start_ui(runtime))
    except BaseException:
        for stop in reversed(stops):
            stop()
        runtime.close()
        raise
    return runtime, stops


def _check_character(runtime) -> None:
    """SettingsError listing the characters when --character (or settings.yaml's chat.character) names none."""
    from modules.errors import SettingsError

    name, names = runtime.settings.chat.character, runtime.prompts.character_names()
    if name not in names:
        raise SettingsError(f"character {name!r} not found in characters/ (choose from {', '.join(names)})")


def _serving(settings):
    """The serving file's entries (--serve), or None for a pool of one (--model)."""
    from modules.errors import SettingsError
    from modules.serving import ENTRY_NAME, load_serving

    model = settings.model
    if model.device == "api":  # Takeoff's one-model shorthand: --model NAME --device api --api-base URL
        from modules.serving import parse_serving

        if model.serve or not model.model or not model.api_base:
            raise SettingsError("--device api needs --model (the upstream's model name) and --api-base URL, "
                                "and excludes --serve")  # fmt: skip
        entry = {"device": "api", "base_url": model.api_base, "upstream_model": model.model}
        if model.api_key_env:
            entry["api_key_env"] = model.api_key_env
        name = model.model if ENTRY_NAME.match(model.model) else "api"
        return parse_serving({"models": {name: entry}}, "--device api")
    if model.device != "local":
        raise SettingsError(f"device {model.device!r} is not one of: local, api")
    if not settings.model.serve:
        return None
    if settings.model.model:
        raise SettingsError("--serve and --model exclude each other: name the model in the serving file")
    return load_serving(settings.path(settings.model.serve))


def _start_ui(runtime):
    try:
        from modules.ui.app import launch_ui
    except ImportError as exc:
        log.warning("The web UI is not available (%s); use --nowebui --api for the API alone", exc)
        return lambda: None
    return launch_ui(runtime)


def _wait_for_signal() -> None:
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while not done.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
