"""The Parameters tab: sampler sliders, presets from presets/*.yaml, max new tokens, seed, stop strings and a
JSON schema or grammar that replies must follow."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from modules.chat import ReplyParams
from modules.constraints.grammar import Grammar
from modules.errors import HearthError
from modules.samplers import BY_NAME
from modules.presets import SAMPLER_KEYS, load_preset, parse_stop_strings, preset_names, sampling_params, save_preset



@dataclass
class ParamsTab:
    """The tab's components; `read(data)` turns their values into ReplyParams."""

    preset: gr.Dropdown
    refresh: gr.Button
    sliders: dict[str, gr.Slider]
    max_new_tokens: gr.Slider
    seed: gr.Number
    stop: gr.Textbox
    ban_eos: gr.Checkbox
    grammar: gr.Textbox
    save_name: gr.Textbox
    save: gr.Button
    status: gr.Markdown

    @property
    def inputs(self) -> set:
        """Every component a reply depends on (for set-style event inputs)."""
        return {*self.sliders.values(), self.max_new_tokens, self.seed, self.stop, self.ban_eos, self.grammar}

    def read(self, data: dict) -> ReplyParams:
        """ReplyParams from an event's input values; InvalidParameter naming a bad value."""
        values = {key: data[slider] for key, slider in self.sliders.items()}
        seed = data[self.seed]
        sampling = sampling_params(values, None if seed is None else int(seed))
        stop = parse_stop_strings(data[self.stop])
        text = (data[self.grammar] or "").strip()
        grammar = Grammar.from_text(text, param="grammar") if text else None
        return ReplyParams(sampling, int(data[self.max_new_tokens]), stop, bool(data[self.ban_eos]), grammar)


def build(runtime) -> ParamsTab:
    """Lay out the tab; initial values come from settings.yaml's generation section."""
    gen = runtime.settings.generation
    folder = runtime.settings.path("presets")
    with gr.Row():
        preset = gr.Dropdown(preset_names(folder), value=None, label="Preset", elem_id="preset", scale=4,
                             info="Loads a preset's values into the sliders below (presets/*.yaml)")  # fmt: skip
        refresh = gr.Button("Refresh", elem_id="preset-refresh", scale=0, min_width=80)
    with gr.Row():
        with gr.Column():
            max_new_tokens = gr.Slider(1, 8192, value=gen.max_new_tokens, step=1, label="max_new_tokens",
                                       elem_id="max-new-tokens")  # fmt: skip
            sliders = {key: _slider(key, getattr(gen, key)) for key in SAMPLER_KEYS[:4]}
            seed = gr.Number(value=gen.seed, precision=0, label="seed (-1 = random)", elem_id="seed")
        with gr.Column():
            sliders.update({key: _slider(key, getattr(gen, key)) for key in SAMPLER_KEYS[4:]})
            stop = gr.Textbox(label="Custom stop strings", elem_id="stop-strings", lines=2,
                              placeholder='"\\n", "###"   (quoted, comma-separated; or one per line)')  # fmt: skip
            ban_eos = gr.Checkbox(False, label="Ban the eos_token (write until max_new_tokens)", elem_id="ban-eos")
    grammar = gr.Textbox(label="JSON schema or grammar", elem_id="grammar", lines=4,
                         info="Replies must follow it: a JSON schema (an object), or a Lark or GBNF grammar "
                              "(text-generation-webui's grammar files). Empty: free text.",
                         placeholder='{"type": "object", "properties": {"answer": {"type": "string"}}}')  # fmt: skip
    with gr.Row():
        save_name = gr.Textbox(label="Save these values as a preset", placeholder="name", scale=4)
        save = gr.Button("Save preset", scale=0, min_width=120)
    status = gr.Markdown(elem_id="params-status")
    return ParamsTab(preset, refresh, sliders, max_new_tokens, seed, stop, ban_eos, grammar, save_name, save, status)


def wire(runtime, tab: ParamsTab) -> None:
    """Connect the preset picker, refresh and save."""
    folder = runtime.settings.path("presets")
    ordered = list(tab.sliders.values())

    def apply(name):
        if not name:
            return [gr.skip()] * (len(ordered) + 1)
        try:
            preset = load_preset(folder, name)
        except HearthError as exc:
            return [gr.skip()] * len(ordered) + [f"{exc.message}"]
        values = preset.sampling()
        note = f"Loaded preset **{name}**." + (f" Ignored (no such sampler): {', '.join(preset.ignored)}."
                                              if preset.ignored else "")  # fmt: skip
        return [getattr(values, key) for key in tab.sliders] + [note]

    def save(name, *values):
        try:
            path = save_preset(folder, (name or "").strip(), dict(zip(tab.sliders, values)))
        except HearthError as exc:
            return gr.skip(), f"{exc.message}"
        return gr.update(choices=preset_names(folder), value=path.stem), f"Saved preset **{path.stem}**."

    tab.preset.change(apply, inputs=tab.preset, outputs=[*ordered, tab.status])
    tab.refresh.click(lambda: gr.update(choices=preset_names(folder)), outputs=tab.preset)
    tab.save.click(save, inputs=[tab.save_name, *ordered], outputs=[tab.preset, tab.status])


def model_defaults_hook(runtime, tab: ParamsTab):
    """(fn, outputs) that set the sliders as the API defaults them: the loaded model's generation_config, else
    settings.yaml. Run on page load and after a model load, so a model that asks for greedy decoding gets it."""
    gen = runtime.settings.generation

    def fill():
        info = runtime.models.info
        if info is None:
            return [getattr(gen, key) for key in tab.sliders] + [gr.skip()]
        resolved, own = runtime.pool.local.engine.sampler_defaults()
        said = ", ".join(f"{key} {value:g}" for key, value in own.items())
        source = "generation_config" + (" and its pool entry's settings" if runtime.models.prompt_settings else "")
        note = f"Sampler values from {info.name}'s {source}: {said}." if own else gr.skip()
        return [resolved[key] for key in tab.sliders] + [note]

    return fill, [*tab.sliders.values(), tab.status]


def _slider(key: str, value) -> gr.Slider:
    low, high, step = BY_NAME[key].slider
    return gr.Slider(low, high, value=value, step=step, label=key, elem_id=key.replace("_", "-"))
