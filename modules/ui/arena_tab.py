"""The Compare tab (shown when the serving file has an A/B split): one prompt, two arms' answers side by side as
model A and model B, names hidden until the vote; votes go to the preference log, pairs export for DPO."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from modules.chat.arena import VOTES, follow, splits, start_battle, vote
from modules.chat.session import reply_sampling
from modules.errors import HearthError


@dataclass
class ArenaTab:
    """The tab's components."""

    split: gr.Dropdown
    prompt: gr.Textbox
    compare: gr.Button
    answers: tuple[gr.Markdown, gr.Markdown]
    votes: dict[str, gr.Button]
    reveal: gr.Markdown
    export: gr.Button
    file: gr.File
    battle: gr.State


def build(runtime) -> ArenaTab:
    """Lay out the tab."""
    names = splits(runtime)
    with gr.Row():
        split = gr.Dropdown(names, value=names[0] if names else None, label="Split", elem_id="arena-split", scale=1)
        prompt = gr.Textbox(label="Prompt", elem_id="arena-prompt", lines=2, scale=4)
        compare = gr.Button("Compare", variant="primary", elem_id="arena-compare", scale=0, min_width=100)
    with gr.Row(equal_height=True):
        with gr.Column():
            gr.Markdown("### Model A")
            answer_a = gr.Markdown(elem_id="arena-a", min_height=120)
        with gr.Column():
            gr.Markdown("### Model B")
            answer_b = gr.Markdown(elem_id="arena-b", min_height=120)
    with gr.Row():
        votes = {label: gr.Button(label, elem_id=f"vote-{i}", interactive=False) for i, label in enumerate(VOTES)}
    reveal = gr.Markdown(elem_id="arena-reveal")
    with gr.Row():
        export = gr.Button("Export preference pairs (TRL, JSONL)", elem_id="arena-export", scale=0)
        file = gr.File(label="Pairs", elem_id="arena-file", interactive=False)
    return ArenaTab(split, prompt, compare, (answer_a, answer_b), votes, reveal, export, file, gr.State(None))


def wire(runtime, tab: ArenaTab, params) -> None:
    """Compare streams both answers; a vote reveals the names and is recorded; export writes the pairs."""
    buttons = list(tab.votes.values())

    def compare(data: dict):
        try:
            reply = params.read(data)
            battle = start_battle(runtime, data[tab.split] or "", data[tab.prompt] or "", reply.max_new_tokens,
                                  reply_sampling(reply))  # fmt: skip
        except HearthError as exc:
            gr.Warning(exc.message)
            yield None, "", "", "", *[gr.update(interactive=False)] * len(buttons)
            return
        for a, b in follow(battle):
            yield battle, a, b, "", *[gr.update(interactive=False)] * len(buttons)
        yield battle, a, b, "", *[gr.update(interactive=True)] * len(buttons)

    tab.compare.click(compare, inputs={tab.split, tab.prompt, *params.inputs},
                      outputs=[tab.battle, *tab.answers, tab.reveal, *buttons])  # fmt: skip

    def voted(label: str):
        def record(battle):
            if battle is None:
                return gr.skip(), *[gr.skip()] * len(buttons)
            try:
                text = vote(runtime, battle, label)
            except HearthError as exc:
                gr.Warning(exc.message)
                return gr.skip(), *[gr.skip()] * len(buttons)
            return text, *[gr.update(interactive=False)] * len(buttons)

        return record

    for label, button in tab.votes.items():
        button.click(voted(label), inputs=tab.battle, outputs=[tab.reveal, *buttons])

    def export():
        log = runtime.pool.preferences
        if log is None:
            gr.Warning("The serving file has no preference_log: nothing to export.")
            return None
        import json

        path = Path(tempfile.mkdtemp(prefix="hearth-pairs-")) / "preferences-trl.jsonl"
        path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in log.pairs()), encoding="utf-8")
        return str(path)

    tab.export.click(export, outputs=tab.file)
