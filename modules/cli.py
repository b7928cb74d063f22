"""Command-line flags with text-generation-webui's names. Imports nothing heavy, so --help is instant."""
from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn, Sequence

from modules.loaders.registry import LOAD_OPTIONS, LoadOption, loader_names

# flag dest -> settings key ("section.field")
OVERRIDES = {
    "model": "model.model",
    "model_dir": "model.model_dir",
    "loader": "model.loader",
    **{o.name: f"model.{o.name}" for o in LOAD_OPTIONS if o.flag},  # the loader registry's options
    "max_queue": "model.max_queue",
    "load_on_demand": "model.load_on_demand",
    "serve": "model.serve",
    "max_loaded": "model.max_loaded",
    "device": "model.device",
    "api_base": "model.api_base",
    "api_key_env": "model.api_key_env",
    "api": "server.api",
    "api_port": "server.api_port",
    "api_key": "server.api_key",
    "admin_key": "server.admin_key",
    "listen": "server.listen",
    "listen_host": "server.listen_host",
    "listen_port": "server.listen_port",
    "nowebui": "server.nowebui",
    "extensions": "server.extensions",
    "ssl_keyfile": "server.ssl_keyfile",
    "ssl_certfile": "server.ssl_certfile",
    "strict_api": "server.strict_api",
    "character": "chat.character",
}


class OneLineParser(argparse.ArgumentParser):
    """Reports a bad flag in one line and exits with code 2 (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def port(value: str) -> int:
    """A TCP port number (0 picks a free one)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {value!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port {number} is out of range 0-65535")
    return number


def int_at_least(minimum: int):
    """An argparse type: an integer >= `minimum`."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"{number} must be at least {minimum}")
        return number

    parse.__name__ = "integer"
    return parse


positive_int = int_at_least(1)


def add_option_flag(group, option: LoadOption) -> None:
    """The server.py flag of a load option, from its registry definition."""
    flag = "--" + option.name.replace("_", "-")
    if option.kind is bool:
        group.add_argument(flag, action="store_true", help=option.help)
    elif option.kind is int:
        group.add_argument(flag, type=int_at_least(option.minimum or 0), help=option.help)
    else:
        group.add_argument(flag, choices=option.choices or None, help=option.help)


def build_parser() -> argparse.ArgumentParser:
    """The server's argument parser; unset flags are absent from the result so settings.yaml can supply them."""
    p = OneLineParser(
        prog="server.py",
        description="Hearth: a local language-model server with a chat UI and an OpenAI-compatible API.",
        argument_default=argparse.SUPPRESS,
    )
    m = p.add_argument_group("model")
    m.add_argument("--model", help="model to load at start (a folder or .gguf name inside --model-dir)")
    m.add_argument("--model-dir", help="folder holding models (default: models)")
    m.add_argument("--loader", choices=loader_names(), help="backend; detected from the model folder when absent")
    for option in LOAD_OPTIONS:
        if option.flag:
            add_option_flag(m, option)
    m.add_argument("--max-queue", type=positive_int, help="requests allowed to wait before 503 (default 64)")
    m.add_argument("--load-on-demand", action="store_true", help="load a model when a request names it")
    m.add_argument("--serve", metavar="FILE", help="serving file (YAML): several named models at once, by `model`")
    m.add_argument("--max-loaded", type=positive_int, help="models on-demand loading keeps loaded (LRU idle unloads)")
    m.add_argument("--device", choices=["local", "api"],
                   help="api: --model names a model of the OpenAI-compatible server at --api-base (Takeoff's word)")
    m.add_argument("--api-base", metavar="URL", help="with --device api: the upstream's base URL (…/v1)")
    m.add_argument("--api-key-env", metavar="VAR", help="with --device api: the env var holding the upstream's token")
    s = p.add_argument_group("server")
    s.add_argument("--listen", action="store_true", help="listen on the local network, not only loopback")
    s.add_argument("--listen-host", help="interface for the UI and API (default 127.0.0.1; 0.0.0.0 with --listen)")
    s.add_argument("--listen-port", type=port, help="web UI port (default 7860)")
    s.add_argument("--nowebui", action="store_true", help="do not start the web UI (headless API mode)")
    s.add_argument("--api", action="store_true", help="enable the OpenAI-compatible API (the openai extension)")
    s.add_argument("--api-port", type=port, help="API port (default 5000)")
    s.add_argument("--api-key", help="require this key as 'Authorization: Bearer' on every API route")
    s.add_argument("--admin-key", help="key for model management routes (default: the API key)")
    s.add_argument("--strict-api", action="store_true", help="reject unknown request fields with 400")
    s.add_argument("--ssl-keyfile", help="TLS private key file")
    s.add_argument("--ssl-certfile", help="TLS certificate file")
    s.add_argument("--extensions", nargs="+", metavar="NAME", help="extensions to load from extensions/")
    o = p.add_argument_group("other")
    o.add_argument("--settings", help="settings file (default: settings.yaml)")
    o.add_argument("--character", help="default character for chat modes")
    o.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse argv (default sys.argv[1:])."""
    return build_parser().parse_args(argv)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Only the flags the user gave, as `section.key` settings overrides."""
    given = vars(args)
    overrides = {OVERRIDES[k]: v for k, v in given.items() if k in OVERRIDES}
    if "extensions" in given:
        overrides["server.extensions"] = tuple(given["extensions"])
    if "api_port" in given:  # the flag beats settings.yaml's `openai-port` too
        overrides["extensions.openai.port"] = given["api_port"]
    return overrides
