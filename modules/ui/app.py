"""The browser UI: build_ui(runtime) assembles the tabs; launch_ui(runtime) serves them beside the API.

Every callback closes over `runtime`; per-tab state lives in a gr.State (a ChatSession), never in module globals.
"""
from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Callable

import gradio as gr

from modules.chat import history_store
from modules.chat.arena import splits
from modules.errors import SettingsError
from modules.ui import arena_tab, chat_tab, model_tab, params_tab

log = logging.getLogger(__name__)

CSS_PATH = Path(__file__).with_name("style.css")
# System fonts only: the default theme would fetch Google Fonts, and the UI must make no outside requests.
SANS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"]
MONO = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]


def theme() -> gr.themes.Theme:
    """The default look with system fonts."""
    return gr.themes.Default(primary_hue="orange", font=SANS, font_mono=MONO)


def build_ui(runtime) -> gr.Blocks:
    """The Blocks app: Chat, Parameters and Model tabs over one runtime (and Compare, when there is a split)."""
    store = history_store(runtime.settings)
    with gr.Blocks(title="Hearth", analytics_enabled=False) as demo:
        session = gr.State(lambda: chat_tab.new_session(runtime, store), delete_callback=_stop_session)
        with gr.Tab("Chat", id="chat"):
            chat = chat_tab.build(runtime)
        with gr.Tab("Parameters", id="parameters"):
            params = params_tab.build(runtime)
        with gr.Tab("Model", id="model"):
            model = model_tab.build(runtime)
        arena = None
        if splits(runtime):
            with gr.Tab("Compare", id="compare"):
                arena = arena_tab.build(runtime)
        chat_tab.wire(runtime, store, session, chat, params)
        params_tab.wire(runtime, params)
        if arena is not None:
            arena_tab.wire(runtime, arena, params)
        loaded = model_tab.wire(runtime, model)
        fn, inputs, outputs = chat.hooks["context"]
        defaults_fn, defaults_out = params_tab.model_defaults_hook(runtime, params)
        models_fn, _, models_out = chat.hooks["models"]
        for event in loaded:  # a new model changes the token count, maybe the template and its sampler defaults
            event.then(models_fn, outputs=models_out)
            event.then(fn, inputs=inputs, outputs=outputs)
            event.then(defaults_fn, outputs=defaults_out)
        fn, inputs, outputs = chat.hooks["page_load"]
        demo.load(fn, inputs=inputs, outputs=outputs)
        demo.load(defaults_fn, outputs=defaults_out)
    return demo


def _stop_session(session) -> None:
    """A tab was closed: stop its reply, if one is streaming."""
    if session is not None:
        session.stop()


def launch_ui(runtime) -> Callable[[], None]:
    """Serve the UI on settings.server.host:listen_port without blocking; print its URL; return a stop function."""
    server = runtime.settings.server
    demo = build_ui(runtime)
    demo.queue(default_concurrency_limit=16)  # several tabs stream at once; the scheduler batches them
    port = server.listen_port or _free_port(server.host)
    ssl = {"ssl_keyfile": server.ssl_keyfile, "ssl_certfile": server.ssl_certfile} if server.ssl_certfile else {}
    try:
        _launch(demo, server, port, ssl, runtime.settings.path("characters"))
    except OSError as exc:  # e.g. the port is taken: a one-line error from server.py, not a traceback
        reason = "the port is in use" if "empty port" in str(exc) else str(exc)
        raise SettingsError(f"the web UI cannot listen on {server.host}:{port}: {reason} (see --listen-port)") from None
    scheme = "https" if ssl else "http"
    shown = "127.0.0.1" if server.host in ("0.0.0.0", "", "::") else server.host
    print(f"Web UI: {scheme}://{shown}:{demo.server_port}", flush=True)
    return demo.close


def _launch(demo: gr.Blocks, server, port: int, ssl: dict, characters: Path) -> None:
    demo.launch(
        server_name=server.host,
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        show_error=True,
        inbrowser=False,
        share=False,
        theme=theme(),
        css_paths=[CSS_PATH],
        allowed_paths=[str(characters.resolve())],  # character pictures, wherever server.py was started from
        ssl_verify=False,  # Gradio checks its own URL at start; a self-signed certificate must pass
        **ssl,
    )


def _free_port(host: str) -> int:
    """A port nobody listens on (for --listen-port 0; Gradio itself needs a number)."""
    with socket.socket() as s:
        s.bind((host if host not in ("", "0.0.0.0") else "127.0.0.1", 0))
        return s.getsockname()[1]
