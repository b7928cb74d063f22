"""The openai extension, in text-generation-webui's shape: `params` and `setup()`.

Enabled by --api or --extensions openai. Serves the Flask app on a thread; returns a stop function.
"""
from __future__ import annotations

import os
import socket
import threading

params = {
    "debug": 0,
    "max_body_mb": 8,
    "keepalive": 10,
}


def setup(ctx):
    """Start the API server; print its URL; return a function that stops it."""
    from werkzeug.serving import make_server

    from extensions.openai.app import create_app

    settings = ctx.runtime.settings.server
    merged = dict(ctx.params)
    if os.environ.get("OPENEDAI_DEBUG"):
        merged["debug"] = os.environ["OPENEDAI_DEBUG"]
    port = int(os.environ.get("OPENEDAI_PORT") or merged.get("port") or settings.api_port)
    certfile = os.environ.get("OPENEDAI_CERT_PATH") or settings.ssl_certfile
    keyfile = os.environ.get("OPENEDAI_KEY_PATH") or settings.ssl_keyfile
    ssl_context = _ssl_context(certfile, keyfile)
    if merged.get("debug") not in (None, 0, "0", ""):
        ctx.logger.setLevel("DEBUG")
    app = create_app(ctx.runtime, merged)
    host = settings.host
    server = make_server(host, _free_port(host, port, ctx.logger), app, threaded=True, ssl_context=ssl_context,
                         request_handler=announcing_handler(ctx.runtime.scheduler))
    thread = threading.Thread(target=server.serve_forever, name="openai-api", daemon=True)
    thread.start()
    scheme = "https" if ssl_context else "http"
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    print(f"OpenAI-compatible API URL: {scheme}://{shown}:{server.server_port}/v1", flush=True)
    ctx.logger.info("API docs: %s://%s:%d/docs", scheme, shown, server.server_port)

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return stop


def announcing_handler(scheduler):
    """Werkzeug's request handler, announcing each connection to the scheduler as it comes in.

    A burst of clients is then prefilled together (see Scheduler.expect); the app keeps the announcement of a
    generation request until it is submitted and drops any other at once (state.install_arrivals)."""
    from werkzeug.serving import WSGIRequestHandler

    class AnnouncingRequestHandler(WSGIRequestHandler):
        def setup(self) -> None:
            self.arrival = scheduler.expect()
            super().setup()

        def make_environ(self):
            environ = super().make_environ()
            environ["hearth.arrival"] = self.arrival
            return environ

        def finish(self) -> None:
            self.arrival.done()  # idempotent: most requests ended it long before
            super().finish()

    return AnnouncingRequestHandler


def _ssl_context(certfile: str, keyfile: str):
    from modules.errors import SettingsError

    if not certfile and not keyfile:
        return None
    if not (certfile and keyfile):
        raise SettingsError("TLS needs both --ssl-certfile and --ssl-keyfile")
    for path in (certfile, keyfile):
        if not os.path.isfile(path):
            raise SettingsError(f"TLS file {path} not found")
    return (certfile, keyfile)


def _free_port(host: str, port: int, logger) -> int:
    # As text-generation-webui: if the port is taken, use a free one and say so.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
            return port
        except OSError:
            probe.bind((host, 0))
            free = probe.getsockname()[1]
    logger.warning("Port %d is already in use; the API uses port %d instead", port, free)
    return free
