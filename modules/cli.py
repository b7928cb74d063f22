"""Command-line flags with text-generation-webui's names. Imports nothing heavy, so --help is instant."""
from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn, Sequence

LOADER_CHOICES = ("transformers", "llama.cpp", "exllamav2")
DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")

# flag dest -> settings key ("section.field")
OVERRIDES = {
    "model": "model.model",
    "model_dir": "model.model_dir",
    "loader": "model.loader",
    "cpu": "model.cpu",
    "dtype": "model.dtype",
    "trust_remote_code": "model.trust_remote_code",
    "threads": "model.threads",
    "max_batch_size": "model.max_batch_size",
    "max_queue": "model.max_queue",
    "load_on_demand": "model.load_on_demand",
    "serve": "model.serve",
    "max_loaded": "model.max_loaded",
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


def positive_int(value: str) -> int:
    """An integer >= 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{number} must be at least 1")
    return number


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
    m.add_argument("--loader", choices=LOADER_CHOICES, help="backend; detected from the model folder when absent")
    m.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is present")
    m.add_argument("--dtype", choices=DTYPE_CHOICES, help="weights dtype (auto: float32 on CPU, bf16/fp16 on GPU)")
    m.add_argument("--trust-remote-code", action="store_true", help="allow model folders to run their own code")
    m.add_argument("--threads", type=positive_int, help="torch CPU threads (default: all cores)")
    m.add_argument("--max-batch-size", type=positive_int, help="sequences decoded together (default 8)")
    m.add_argument("--max-queue", type=positive_int, help="requests allowed to wait before 503 (default 64)")
    m.add_argument("--load-on-demand", action="store_true", help="load a model when a request names it")
    m.add_argument("--serve", metavar="FILE", help="serving file (YAML): several named models at once, by `model`")
    m.add_argument("--max-loaded", type=positive_int, help="models on-demand loading keeps loaded (LRU idle unloads)")
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
