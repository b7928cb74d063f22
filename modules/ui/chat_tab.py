"""The Chat tab: the conversation, its buttons, and the side panel (mode, character, template, name, history).

Callbacks take set-style inputs (a dict of component -> value) and act on the tab's ChatSession.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import gradio as gr

from modules.chat import (
    ChatOptions, ChatSession, HistoryStore, character_card, entry_model, measure, new_conversation,
)
from modules.errors import ContextTooLong, HearthError
from modules.prompts import MODES
from modules.ui import history_panel
from modules.ui.params_tab import ParamsTab

FPS = 20  # most chat updates sent to the browser per second while a reply streams


class TabSession(ChatSession):
    """A ChatSession kept in a gr.State: Gradio deep-copies state values, which must not copy the runtime."""

    def __deepcopy__(self, memo):
        return self


@dataclass
class ChatTab:
    """The tab's components, and (after wire) the hooks the app needs for page load and model changes."""

    chatbot: gr.Chatbot
    text: gr.Textbox
    send: gr.Button
    buttons: dict[str, gr.Button]
    context: gr.Markdown
    mode: gr.Radio
    character: gr.Dropdown
    picture: gr.Image
    card: gr.Markdown
    template: gr.Dropdown
    name1: gr.Textbox
    user_bio: gr.Textbox
    command: gr.Textbox
    history: history_panel.HistoryPanel
    model: gr.Dropdown  # the pool entry to talk to
    hooks: dict[str, Callable] = field(default_factory=dict)

    @property
    def options_inputs(self) -> set:
        """Components that shape the prompt."""
        return {self.template, self.name1, self.user_bio, self.command, self.model}

    def options(self, data: dict) -> ChatOptions:
        """ChatOptions from an event's input values."""
        return ChatOptions(data[self.template] or "", (data[self.name1] or "").strip(), data[self.user_bio] or "",
                           data[self.command] or "", data[self.model] or "")  # fmt: skip


INSTRUCT_CARD = ("### Instruct mode\n\nThe model answers as itself, in its instruction template's format; "
                 "the character takes part in the chat modes only.")


def model_choices(runtime) -> list[tuple[str, str]]:
    """The chat tab's model picker: the default entry, then every named pool entry."""
    return [("Default", ""), *((name, name) for name in runtime.pool.names())]


def new_session(runtime, store: HistoryStore) -> TabSession:
    """A tab's session, opened on a fresh chat with the default mode and character (page load picks the chat)."""
    chat = runtime.settings.chat
    try:
        conversation = new_conversation(runtime.prompts, chat.mode, chat.character, chat.name1)
    except HearthError:
        conversation = new_conversation(runtime.prompts, chat.mode, "Assistant", chat.name1)
    return TabSession(runtime, store, conversation)


def build(runtime) -> ChatTab:
    """Lay out the tab with settings.yaml's chat defaults."""
    chat, prompts = runtime.settings.chat, runtime.prompts
    with gr.Row():
        with gr.Column(scale=4):
            chatbot = gr.Chatbot(elem_id="chat", height=560, label="Chat", buttons=["copy", "copy_all"],
                                 feedback_options=None, group_consecutive_messages=False)  # fmt: skip
            with gr.Row():  # lines=1: Enter sends, Shift+Enter breaks the line (Gradio swaps them from 2 lines up)
                text = gr.Textbox(show_label=False, placeholder="Send a message (Enter; Shift+Enter for a new line)",
                                  lines=1, max_lines=12, scale=8, elem_id="chat-input", autofocus=True)  # fmt: skip
                send = gr.Button("Send", variant="primary", scale=1, min_width=90, elem_id="send")
            with gr.Row():
                names = ("Stop", "Regenerate", "Continue", "Remove last", "Copy last", "New chat")
                buttons = {n: gr.Button(n, size="sm", elem_id=n.lower().replace(" ", "-"), min_width=80,
                                        variant="stop" if n == "Stop" else "secondary",
                                        interactive=n != "Stop") for n in names}  # Stop: only while a reply runs
            context = gr.Markdown(elem_id="context-info")
        with gr.Column(scale=1, min_width=280):
            model = gr.Dropdown(model_choices(runtime), value="", label="Model", elem_id="chat-model",
                                info="the pool entry that answers")  # fmt: skip
            mode = gr.Radio(list(MODES), value=chat.mode, label="Mode", elem_id="mode")
            characters = _character_names(prompts)
            character = gr.Dropdown(characters, value=chat.character, label="Character", elem_id="character")
            picture = gr.Image(label="Picture", interactive=False, height=180, elem_id="character-picture",
                               visible=False, buttons=[])  # fmt: skip
            card = gr.Markdown(elem_id="character-card")
            template = gr.Dropdown([("Automatic", ""), *prompts.template_names()], value=chat.instruction_template,
                                   label="Instruction template", elem_id="instruction-template")  # fmt: skip
            name1 = gr.Textbox(chat.name1, label="Your name", elem_id="name1")
            with gr.Accordion("More prompt options", open=False):
                user_bio = gr.Textbox(chat.user_bio, label="About you (chat modes)", lines=2)
                command = gr.Textbox(chat.chat_instruct_command, label="Command for chat-instruct mode", lines=4)
            history = history_panel.build()
    return ChatTab(chatbot, text, send, buttons, context, mode, character, picture, card, template, name1,
                   user_bio, command, history, model)  # fmt: skip


def wire(runtime, store: HistoryStore, state: gr.State, tab: ChatTab, params: ParamsTab) -> None:
    """Connect the tab's events; fills tab.hooks with the page-load and context refreshers."""
    view = _View(runtime, store, tab, state)
    inputs = {state, tab.mode, tab.character, *tab.options_inputs, *params.inputs}
    streamed = [tab.chatbot, tab.context, tab.history.picker, tab.history.notice]

    def send(data):
        text = (data[tab.text] or "").strip()
        session = data[state]
        if not text:
            yield gr.skip(), *view.refresh(session, data)
            return
        for i, outputs in enumerate(view.stream(session, data, lambda o, p: session.send(text, o, p), params)):
            yield ("" if i == 0 else gr.skip()), *outputs

    def regenerate(data):
        yield from view.stream(data[state], data, data[state].regenerate, params)

    def continue_(data):
        yield from view.stream(data[state], data, data[state].continue_, params)

    def remove_last(data):
        return data[state].remove_last(), *view.refresh(data[state], data)

    def new_chat(data):
        session = data[state]
        session.open(new_conversation(runtime.prompts, session.conversation.mode, session.conversation.character,
                                      data[tab.name1]))  # fmt: skip
        return view.refresh(data[state], data)

    def replying(trigger, fn, inputs, outputs) -> None:
        """Wire a reply-making event; the Stop button is live from its start to its end."""
        stop = tab.buttons["Stop"]
        trigger(lambda: gr.update(interactive=True), outputs=stop, queue=False)
        trigger(fn, inputs=inputs, outputs=outputs).then(lambda: gr.update(interactive=False), outputs=stop,
                                                         queue=False)  # fmt: skip

    for trigger in (tab.send.click, tab.text.submit):
        replying(trigger, send, {tab.text, *inputs}, [tab.text, *streamed])
    replying(tab.buttons["Regenerate"].click, regenerate, inputs, streamed)
    replying(tab.buttons["Continue"].click, continue_, inputs, streamed)
    tab.buttons["Stop"].click(lambda s: s.stop(), inputs=state, queue=False)
    tab.buttons["Remove last"].click(remove_last, inputs=inputs, outputs=[tab.text, *streamed])
    tab.buttons["Copy last"].click(lambda s: s.conversation.last_reply(), inputs=state, outputs=tab.text)
    tab.buttons["New chat"].click(new_chat, inputs=inputs, outputs=streamed)
    tab.chatbot.clear(new_chat, inputs=inputs, outputs=streamed)  # the chat's trash icon starts afresh too
    switched = [*streamed, tab.picture, tab.card, tab.name1]
    for control in (tab.mode, tab.character):
        control.input(view.switch, inputs=inputs, outputs=switched)
    history_panel.wire(tab.history, store, state, inputs, streamed, view.refresh)
    tab.hooks.update(
        page_load=(lambda data: view.switch(data, keep_name=True), inputs, switched),
        context=(lambda data: view.context_text(data[state], data), inputs, tab.context),
        models=(lambda: gr.update(choices=model_choices(runtime)), [], tab.model),
    )
    tab.model.input(lambda data: view.context_text(data[state], data), inputs=inputs, outputs=tab.context)


class _View:
    """Turns a session into component values; the callbacks above stay short."""

    def __init__(self, runtime, store: HistoryStore, tab: ChatTab, state: gr.State):
        self.runtime, self.store, self.tab, self.state = runtime, store, tab, state

    def stream(self, session: TabSession, data: dict, start, params: ParamsTab):
        """Run one reply, yielding the chat as it grows, then the refreshed side panel."""
        try:
            replies = start(self.tab.options(data), params.read(data))
            shown = 0.0
            for i, _ in enumerate(replies):
                # Frames, not tokens: the model runs at full speed; the browser gets at most FPS updates a second.
                if time.monotonic() - shown >= 1 / FPS:
                    context = _context_line(session.context) if i == 0 else gr.skip()
                    yield _messages(session), context, gr.skip(), gr.skip()
                    shown = time.monotonic()
        except HearthError as exc:
            gr.Warning(exc.message)
        yield self.refresh(session, data)

    def refresh(self, session: TabSession, data: dict) -> tuple:
        """Chat, context line, history picker and notice for the open conversation."""
        picker, notice = history_panel.picker_update(self.store, session.conversation)
        return _messages(session), self.context_text(session, data), picker, notice

    def switch(self, data: dict, keep_name: bool = False) -> tuple:
        """Open the latest chat for the chosen mode and character (a new one if there is none)."""
        session, mode, name = data[self.state], data[self.tab.mode], data[self.tab.character]
        try:
            card = character_card(self.runtime.prompts, name, data[self.tab.name1])
        except HearthError as exc:
            gr.Warning(exc.message)
            return (gr.skip(),) * 7
        name1 = data[self.tab.name1] if keep_name or not card.user_name else card.user_name
        try:
            conversation = self.store.latest(mode, name)
        except HearthError as exc:
            gr.Warning(exc.message)
            conversation = None
        session.open(conversation or new_conversation(self.runtime.prompts, mode, name, name1))
        if mode == "instruct":  # no character takes part: the card says so rather than show one that is not used
            return *self.refresh(session, data), gr.update(value=None, visible=False), INSTRUCT_CARD, name1
        picture = gr.update(value=str(card.picture) if card.picture else None, visible=card.picture is not None)
        text = f"### {card.name}\n\n{card.greeting}" if card.greeting else f"### {card.name}"
        return *self.refresh(session, data), picture, text, name1

    def context_text(self, session: TabSession, data: dict) -> str:
        """How many tokens the chat fills in the loaded model's context."""
        try:
            info = entry_model(self.runtime, self.tab.options(data))
        except HearthError as exc:
            return exc.message[:1].upper() + exc.message[1:]
        if info is not None and not session.conversation.messages:
            return f"Empty chat · {info.name} · context {info.context_length} tokens"
        try:
            return _context_line(measure(self.runtime, session.conversation, self.tab.options(data)))
        except ContextTooLong:
            return (f"Context: **full** · the latest exchange no longer fits {info.name}'s {info.context_length} "
                    "tokens: Remove last, or start a New chat")  # fmt: skip
        except HearthError as exc:
            return exc.message[:1].upper() + exc.message[1:]


def _context_line(info) -> str:
    if info is None:
        return ""
    if not info.context_length:  # an API model: its upstream renders and counts the prompt
        return f"Answered by **{info.model}** through its upstream API (it renders and counts the prompt)"
    line = (f"Context: **{info.prompt_tokens} / {info.context_length}** tokens in context · {info.model} · "
            f"template {info.template} ({info.template_source})")  # fmt: skip
    dropped = info.dropped_messages
    return line + (f" · {dropped} old message{'s' if dropped > 1 else ''} left out" if dropped else "")


def _messages(session: ChatSession) -> list[dict]:
    return [dict(m) for m in session.conversation.messages if m["role"] != "system"]


def _character_names(prompts) -> list[str]:
    names = prompts.character_names()
    return names if "Assistant" in names else ["Assistant", *names]
