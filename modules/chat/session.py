"""A browser tab's chat: send, regenerate, continue, remove last, stop, streamed through the shared scheduler.

Each reply is a ChatRequest to the picked pool entry's engine, the same path the API uses. Nothing here holds a
lock while a reply is generated: each reply is one scheduler request, batched with everyone else's.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, TypeVar

from modules.chat.conversation import Conversation
from modules.constraints.grammar import Grammar
from modules.chat.history import HistoryStore
from modules.engine.base import (
    ChatRequest, Generation, OutputOptions, PromptChoices, PromptPreview, SamplerValues, require_constraints,
)
from modules.errors import CharacterNotFound, HearthError, ModelNotLoaded
from modules.generation import SamplingParams
from modules.handle import Handle
from modules.prompts import Character
from modules.samplers import SAMPLER_NAMES
from modules.prompts.characters import BUILTIN_ASSISTANT, replace_names
from modules.prompts.types import DEFAULT_CHARACTER, DEFAULT_NAME1

T = TypeVar("T")
SAVE_EVERY = 2.0  # seconds between saves while a reply streams (it is always saved when it ends)


@dataclass(frozen=True)
class ChatOptions:
    """How the chat is formatted: the choices in the chat tab besides the mode and the character."""

    instruction_template: str = ""  # "" -> automatic: the loaded model's settings, its own template, a guess
    name1: str = ""  # the user's name; "" -> the character's `your_name`, else "You"
    user_bio: str = ""
    chat_instruct_command: str = ""
    model: str = ""  # the pool entry to talk to; "" -> the default entry


@dataclass(frozen=True)
class ReplyParams:
    """How replies are sampled: a preset's values, the length limit and extra stop strings."""

    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_new_tokens: int = 512
    stop: tuple[str, ...] = ()
    ban_eos: bool = False  # text-generation-webui's "Ban the eos_token": write until max_new_tokens
    grammar: Grammar | None = None  # the Parameters tab's JSON schema or grammar: replies must match it


@dataclass(frozen=True)
class ContextInfo:
    """How full the model's context is for the current chat, and which template formatted it."""

    model: str
    prompt_tokens: int
    context_length: int
    template: str
    template_source: str
    dropped_messages: int = 0


def chat_request(conversation: Conversation, options: ChatOptions, params: ReplyParams,
                 continue_: bool = False) -> ChatRequest:  # fmt: skip
    """The engine's request for the next reply: the tab's choices (blank ones left to the engine) and the preset."""
    values = reply_sampling(params)
    prompt = PromptChoices(
        mode=conversation.mode, character=conversation.character,
        instruction_template=options.instruction_template or None, name1=options.name1 or None,
        user_bio=options.user_bio or None, chat_instruct_command=options.chat_instruct_command or None,
        continue_=continue_,
    )  # fmt: skip
    output = OutputOptions(max_tokens=params.max_new_tokens, stop=tuple(params.stop), ban_eos=params.ban_eos)
    return ChatRequest(tuple(conversation.messages), prompt, values, output, shrink_reply=True,
                       constraint=params.grammar)  # fmt: skip


def reply_sampling(params: ReplyParams) -> SamplerValues:
    """The Parameters tab's sampler values as the engine takes them."""
    sampling = params.sampling
    return SamplerValues(**{name: getattr(sampling, name) for name in SAMPLER_NAMES},
                         seed=-1 if sampling.seed is None else sampling.seed, logit_bias=dict(sampling.logit_bias))


def engine_for(runtime, options: ChatOptions):
    """The engine of the pool entry the chat tab picked (the default entry when none is)."""
    return runtime.pool.route(options.model or None).engine


def entry_model(runtime, options: ChatOptions):
    """Facts about the local model of the entry the chat tab picked (ModelInfo); None when it has none loaded
    (or answers through an upstream)."""
    manager = getattr(engine_for(runtime, options), "manager", None)
    return manager.info if manager is not None else None


def measure(runtime, conversation: Conversation, options: ChatOptions, reserve: int = 0) -> ContextInfo:
    """The prompt the next reply would get, counted; ModelNotLoaded or ContextTooLong when it cannot be built."""
    engine = engine_for(runtime, options)
    request = chat_request(conversation, options, ReplyParams(max_new_tokens=max(reserve, 1)))
    request = for_engine(engine, request, runtime.prompts)
    return _context_info(entry_label(engine), _ui_errors(lambda: engine.preview(request)))


def start_reply(runtime, conversation: Conversation, options: ChatOptions, params: ReplyParams,
                continue_: bool = False) -> tuple[Generation, ContextInfo]:  # fmt: skip
    """Submit the next reply to the picked entry's engine; the generation and the context it fills."""
    engine = engine_for(runtime, options)
    request = for_engine(engine, chat_request(conversation, options, params, continue_), runtime.prompts)

    def submit() -> Generation:
        if request.constraint is not None:  # an API model cannot follow the grammar: refused, not ignored
            require_constraints(engine.capabilities, request)
        return engine.chat(request)

    gen = _ui_errors(submit)
    return gen, _context_info(entry_label(engine), gen.preview)


def for_engine(engine, request: ChatRequest, prompts) -> ChatRequest:
    """The request as an engine that renders no templates (an API model) takes it: the character's context as a
    system message, the conversation as messages; other engines get it unchanged."""
    try:
        if engine.capabilities.templates:
            return request
    except HearthError:
        return request  # the engine reports its own state (nothing loaded) when asked to answer
    messages = list(request.messages)
    choices = request.prompt
    if choices.mode != "instruct" and choices.character:
        context = character_card(prompts, choices.character, choices.name1 or "").context.strip()
        if context:
            messages.insert(0, {"role": "system", "content": context})
    return dataclasses.replace(request, messages=tuple(messages), prompt=PromptChoices(), shrink_reply=False)


def entry_label(engine) -> str:
    """The entry's name, with its model's when they differ ("second (tiny-gpt2)")."""
    manager = getattr(engine, "manager", None)
    info = manager.info if manager is not None else None
    model = info.name if info is not None else ""
    return engine.name if engine.name in (model, None) or not model else f"{engine.name} ({model})"


def character_card(prompts, name: str, name1: str = "") -> Character:
    """The character as the chat shows it, {{user}}/{{char}} filled in; the built-in assistant for "Assistant"."""
    try:
        character = prompts.load_character(name)
    except CharacterNotFound:
        if name != DEFAULT_CHARACTER:
            raise
        character = BUILTIN_ASSISTANT
    user = name1 or character.user_name or DEFAULT_NAME1
    return dataclasses.replace(
        character,
        greeting=replace_names(character.greeting, user, character.name).strip(),
        context=replace_names(character.context, user, character.name),
    )


def new_conversation(prompts, mode: str, character: str, name1: str = "") -> Conversation:
    """A fresh chat, opening with the character's greeting in chat modes."""
    return Conversation.new(mode, character, character_card(prompts, character, name1).greeting)


def detected_template(runtime, model: str | None = None) -> tuple[str, str] | None:
    """(template name, source) an entry's instruct prompts use (the default entry's), or None with no model."""
    engine = runtime.pool.route(model).engine
    try:
        return engine.detected_template() if engine.capabilities.templates else None
    except ModelNotLoaded:
        return None


def _ui_errors(start: Callable[[], T]) -> T:
    try:
        return start()
    except ModelNotLoaded:
        raise ModelNotLoaded("no model is loaded: pick one in the Model tab") from None


def _context_info(model: str | None, preview: PromptPreview) -> ContextInfo:
    return ContextInfo(model or "", preview.tokens, preview.context_length, preview.template,
                       preview.template_source, preview.dropped_messages)  # fmt: skip


class ChatSession:
    """One tab's open chat and the reply being generated for it; each edit is saved at once."""

    def __init__(self, runtime, store: HistoryStore, conversation: Conversation):
        self.runtime = runtime
        self.store = store
        self.conversation = conversation
        self.context: ContextInfo | None = None  # set when a reply starts
        self._handle: Handle | None = None

    def open(self, conversation: Conversation) -> None:
        """Switch to another chat (stopping a reply still streaming into the old one)."""
        self.stop()
        self.conversation = conversation
        self.context = None

    def stop(self) -> None:
        """Stop the reply being generated, if any; what was written so far is kept and saved."""
        handle = self._handle
        if handle is not None:
            handle.cancel()

    def save(self) -> None:
        """Save the open chat (only once it holds a user message: a lone greeting is not a chat yet)."""
        if self.conversation.has_exchange():
            self.store.save(self.conversation)

    def send(self, text: str, options: ChatOptions, params: ReplyParams) -> Iterator[str]:
        """Add the user's message and stream the reply (the text so far, at each step)."""
        self.stop()
        self.conversation.add_user(text)
        self.save()
        yield from self._reply(self.conversation, options, params, continue_=False)

    def regenerate(self, options: ChatOptions, params: ReplyParams) -> Iterator[str]:
        """Replace the last reply with a new one; nothing happens when there is no message to answer."""
        self.stop()
        if self.conversation.drop_reply_for_regenerate():
            yield from self._reply(self.conversation, options, params, continue_=False)

    def continue_(self, options: ChatOptions, params: ReplyParams) -> Iterator[str]:
        """Extend the last reply; with a user message last, write a new reply instead."""
        self.stop()
        last = self.conversation.messages[-1:] if self.conversation.messages else []
        if last:
            yield from self._reply(self.conversation, options, params, continue_=last[0]["role"] == "assistant")

    def remove_last(self) -> str:
        """Remove the last exchange and return the user's text (for the input box), as text-generation-webui."""
        self.stop()
        text = self.conversation.remove_last()
        c = self.conversation
        if c.has_exchange() or self.store.path(c.mode, c.character, c.id).exists():
            self.store.save(c)
        return text

    def _reply(self, conversation: Conversation, options, params, continue_: bool) -> Iterator[str]:
        gen, self.context = start_reply(self.runtime, conversation, options, params, continue_)
        handle = gen.handles[0]
        self._handle = handle
        if continue_:
            message = conversation.messages[-1]
        else:  # the reply's own dict, so a newer reply in this tab never writes into it
            message = {"role": "assistant", "content": ""}
            conversation.messages.append(message)
        base, text, saved_at = message["content"], "", time.monotonic()
        try:
            for delta in handle.events():
                text += delta.text
                message["content"] = base + text
                if time.monotonic() - saved_at > SAVE_EVERY:
                    self.store.save(conversation)
                    saved_at = time.monotonic()
                yield message["content"]
        finally:
            handle.cancel()
            if self._handle is handle:
                self._handle = None
            self.store.save(conversation)
