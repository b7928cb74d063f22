"""The Model tab: the pool's entries, the models folder, load and unload per entry with progress, loader options."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import gradio as gr

from modules.chat import detected_template
from modules.errors import HearthError
from modules.loaders.registry import LOAD_OPTIONS, OPTIONS_BY_NAME, LoadOption, checked_options, loader_names

PROGRESS_EVERY = 0.5  # seconds between progress lines while a model loads
SOURCES = {
    "model": "the model's own chat template",
    "guess": "guessed from the folder name (models/config.yaml)",
    "fallback": "no template found: the Alpaca fallback",
    "request": "chosen in settings or when the model was loaded",
    "request-string": "a custom template given when the model was loaded",
}


@dataclass
class ModelTab:
    """The tab's components."""

    model: gr.Dropdown
    entry: gr.Dropdown  # the pool entry to load into or unload ("" = the default entry; a new name adds one)
    refresh: gr.Button
    options: dict[str, gr.components.Component]  # "loader" and the registry's UI options, by name
    load: gr.Button
    unload: gr.Button
    status: gr.Markdown


def build(runtime) -> ModelTab:
    """Lay out the tab; option defaults come from settings.yaml's model section."""
    settings = runtime.settings.model
    entry = runtime.models.entry
    with gr.Row():
        model = gr.Dropdown(_choices(runtime), value=entry.name if entry else None, label="Model", scale=4,
                            elem_id="model-select", info=f"Models in {settings.model_dir}/")  # fmt: skip
        pool_entry = gr.Dropdown(_entries(runtime), value="", label="Pool entry", scale=2, elem_id="model-entry",
                                 allow_custom_value=True, info="a new name adds an entry")  # fmt: skip
        refresh = gr.Button("Refresh", elem_id="model-refresh", scale=0, min_width=80)
    with gr.Row():
        load = gr.Button("Load", variant="primary", elem_id="model-load")
        unload = gr.Button("Unload", elem_id="model-unload")
    with gr.Accordion("Loader options", open=True):
        options = {"loader": gr.Dropdown(["auto", *loader_names()], value=settings.loader or "auto", label="loader")}
        with gr.Row():
            for option in LOAD_OPTIONS:
                if option.ui:
                    options[option.name] = option_field(option, getattr(settings, option.name))
    status = gr.Markdown(model_status(runtime), elem_id="model-status")
    return ModelTab(model, pool_entry, refresh, options, load, unload, status)


def option_field(option: LoadOption, value):
    """The Model tab's field for a load option, from its registry definition."""
    label = f"{option.name} ({option.help})"
    if option.kind is bool:
        return gr.Checkbox(value, label=label)
    if option.choices:
        return gr.Dropdown(list(option.choices), value=value, label=label)
    return gr.Number(value, precision=0, minimum=option.minimum, label=label)


def wire(runtime, tab: ModelTab) -> list:
    """Connect the buttons; returns the events after which the loaded model may have changed."""

    names = list(tab.options)

    def load(name, entry, *values):
        if not name:
            yield "Pick a model first."
            return
        options = {key: OPTIONS_BY_NAME[key].kind(value or 0) if key in OPTIONS_BY_NAME else value
                   for key, value in zip(names, values)}  # fmt: skip
        options["loader"] = None if options["loader"] == "auto" else options["loader"]
        try:
            options = checked_options(options, "options")
        except HearthError as exc:
            yield exc.message
            return
        yield from _load_with_progress(runtime, name, (entry or "").strip() or None, options)

    def unload(entry):
        try:
            name = runtime.pool.route(entry or None).model_name
            runtime.pool.unload(entry or None)
        except HearthError as exc:
            return exc.message + "\n\n" + model_status(runtime)
        return (f"Unloaded **{name}**." if name else "No model was loaded.") + "\n\n" + model_status(runtime)

    options = list(tab.options.values())
    tab.refresh.click(lambda: (gr.update(choices=_choices(runtime)), gr.update(choices=_entries(runtime))),
                      outputs=[tab.model, tab.entry])  # fmt: skip
    loaded = tab.load.click(load, inputs=[tab.model, tab.entry, *options], outputs=tab.status, concurrency_limit=1)
    unloaded = tab.unload.click(unload, inputs=tab.entry, outputs=tab.status, concurrency_limit=1)
    for event in (loaded, unloaded):
        event.then(lambda: gr.update(choices=_entries(runtime)), outputs=tab.entry)
    return [loaded, unloaded]


def _load_with_progress(runtime, name: str, entry: str | None, options: dict):
    """Load into `entry` (None: the default) on a helper thread and report the seconds spent until it is done."""
    outcome: dict = {}

    def work():
        try:
            runtime.pool.load(name, entry, options)
        except HearthError as exc:
            outcome["error"] = exc.message
        except Exception as exc:  # shown in the tab instead of a bare "Error"
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    started = time.monotonic()
    thread = threading.Thread(target=work, name="ui-model-load", daemon=True)
    thread.start()
    while thread.is_alive():
        yield f"Loading **{name}**… {time.monotonic() - started:.0f} s"
        thread.join(PROGRESS_EVERY)
    if "error" in outcome:
        yield f"Could not load **{name}**: {outcome['error']}\n\n" + model_status(runtime)
    else:
        yield f"Loaded **{name}** in {time.monotonic() - started:.1f} s.\n\n" + model_status(runtime)


def model_status(runtime) -> str:
    """What is loaded, on what, and which instruction template its prompts use."""
    info = runtime.models.info
    if info is None:
        return "No model is loaded. Pick one above and press **Load**."
    try:
        found = detected_template(runtime)
    except HearthError as exc:
        found = None
        template = f"none usable ({exc.message})"
    if found is not None:
        name, source = found
        template = f"**{name}** ({SOURCES.get(source, source)})"
    return (
        f"Loaded: **{info.name}** · loader {info.loader} · {info.device} · {info.dtype} · "
        f"context {info.context_length} tokens\n\nInstruction template: {template}" + _pool_lines(runtime)
    )


def _serves(entry) -> str:
    """What an entry serves: its local model, or its kind (an API model, a split)."""
    if entry.manager is None:
        from modules.engine.kinds import kind_label

        return kind_label(entry.spec)
    return entry.model_name or "nothing loaded"


def _pool_lines(runtime) -> str:
    """The pool's entries and what each serves, when there is more than the one default entry."""
    entries = runtime.pool.entries()
    if len(entries) < 2 and entries[0].fixed_name is None:
        return ""
    lines = [f"- **{e.name or '(default)'}**: {_serves(e)}"
             + (" · default" if i == 0 else "") + (f" · version {e.version}" if e.version else "")
             for i, e in enumerate(entries)]  # fmt: skip
    return "\n\nPool entries:\n" + "\n".join(lines)


def _choices(runtime) -> list[str]:
    return [entry.name for entry in runtime.pool.folder_models()]


def _entries(runtime) -> list[tuple[str, str]]:
    return [("default entry", ""), *((name, name) for name in runtime.pool.names())]
