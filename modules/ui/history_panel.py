"""The saved-chats panel of the Chat tab: pick, rename and delete the chats of the current character and mode."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from modules.chat import Conversation, HistoryStore, new_conversation
from modules.errors import HearthError


@dataclass
class HistoryPanel:
    """The panel's components."""

    picker: gr.Dropdown
    rename_to: gr.Textbox
    rename: gr.Button
    delete: gr.Button
    confirm_row: gr.Row
    confirm: gr.Button
    cancel: gr.Button
    notice: gr.Markdown


def build() -> HistoryPanel:
    """Lay out the panel (filled in on page load)."""
    with gr.Accordion("Saved chats", open=True):
        picker = gr.Dropdown([], value=None, label="Open a saved chat", elem_id="history")
        with gr.Row():
            rename_to = gr.Textbox(show_label=False, placeholder="new name", scale=3, elem_id="history-name")
            rename = gr.Button("Rename", size="sm", scale=1, min_width=70, elem_id="history-rename")
        delete = gr.Button("Delete this chat", size="sm", variant="stop", elem_id="history-delete")
        with gr.Row(visible=False) as confirm_row:
            confirm = gr.Button("Yes, delete", size="sm", variant="stop", elem_id="history-delete-confirm")
            cancel = gr.Button("Keep it", size="sm", elem_id="history-delete-cancel")
        notice = gr.Markdown(elem_id="history-notice")
    return HistoryPanel(picker, rename_to, rename, delete, confirm_row, confirm, cancel, notice)


def picker_update(store: HistoryStore, conversation: Conversation) -> tuple:
    """The picker's choices for the open chat's character and mode, and a note on damaged files."""
    try:
        listing = store.list(conversation.mode, conversation.character)
    except HearthError as exc:
        return gr.update(choices=[], value=None), f"{exc.message}"
    choices = [(entry.label, entry.id) for entry in listing.entries]
    value = conversation.id if any(entry.id == conversation.id for entry in listing.entries) else None
    notice = ""
    if listing.problems:
        notice = "Skipped damaged chat files:\n" + "\n".join(f"- {p}" for p in listing.problems)
    return gr.update(choices=choices, value=value), notice


def wire(panel: HistoryPanel, store: HistoryStore, state: gr.State, inputs: set, outputs: list, refresh) -> None:
    """Connect the panel; `refresh(session, data)` gives values for `outputs` (chat, context, picker, notice)."""
    inputs = {*inputs, panel.picker, panel.rename_to}

    def open_chat(data):
        session, chosen = data[state], data[panel.picker]
        if chosen:
            try:
                c = session.conversation
                session.open(store.load(c.mode, c.character, chosen))
            except HearthError as exc:
                gr.Warning(exc.message)
        return *refresh(session, data), chosen or ""

    def rename(data):
        session, old, new = data[state], data[panel.picker], (data[panel.rename_to] or "").strip()
        c = session.conversation
        try:
            if not old:
                raise HearthError("pick a saved chat to rename")
            store.rename(c.mode, c.character, old, new)
            if c.id == old:
                c.id = new
        except HearthError as exc:
            gr.Warning(exc.message)
        return refresh(session, data)

    def delete(data):
        session, chosen = data[state], data[panel.picker]
        c = session.conversation
        try:
            if not chosen:
                raise HearthError("pick a saved chat to delete")
            store.delete(c.mode, c.character, chosen)
        except HearthError as exc:
            gr.Warning(exc.message)
        if c.id == chosen:
            latest = store.latest(c.mode, c.character)
            session.open(latest or new_conversation(session.runtime.prompts, c.mode, c.character))
        return *refresh(session, data), gr.update(visible=False)

    panel.picker.input(open_chat, inputs=inputs, outputs=[*outputs, panel.rename_to])
    panel.rename.click(rename, inputs=inputs, outputs=outputs)
    panel.delete.click(lambda: gr.update(visible=True), outputs=panel.confirm_row)
    panel.cancel.click(lambda: gr.update(visible=False), outputs=panel.confirm_row)
    panel.confirm.click(delete, inputs=inputs, outputs=[*outputs, panel.confirm_row])
