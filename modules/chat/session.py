"""A browser tab's chat: send, regenerate, continue, remove last, stop, streamed through the shared scheduler.

The prompt goes through modules.chat_prompt.prepare_prompt, the same path the API uses. Nothing here holds a
lock while a reply is generated: each reply is one scheduler request, batched with everyone else's.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Iterator

from modules.chat.conversation import Conversation
from modules.chat.history import HistoryStore
from modules.chat_prompt import PreparedPrompt, prepare_prompt
from modules.errors import CharacterNotFound, ContextTooLong, ModelChanged, ModelNotLoaded
from modules.generation import GenerationRequest, SamplingParams
from modules.handle import Handle
from modules.prompts import Character, PromptOptions
from modules.prompts.characters import BUILTIN_ASSISTANT, replace_names
from modules.prompts.types import DEFAULT_CHARACTER, DEFAULT_NAME1

SAVE_EVERY = 2.0  # seconds between saves while a reply streams (it is always saved when it ends)


@dataclass(frozen=True)
class ChatOptions:
    """How the chat is formatted: the choices in the chat tab besides the mode and the character."""

    instruction_template: str = ""  # "" -> automatic: the loaded model's settings, its own template, a guess
    name1: str = ""  # the user's name; "" -> the character's `your_name`, else "You"
    user_bio: str = ""
    chat_instruct_command: str = ""


@dataclass(frozen=True)
class ReplyParams:
    """How replies are sampled: a preset's values, the length limit and extra stop strings."""

    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_new_tokens: int = 512
    stop: tuple[str, ...] = ()
    ban_eos: bool = False  # text-generation-webui's "Ban the eos_token": write until max_new_tokens


@dataclass(frozen=True)
class ContextInfo:
    """How full the model's context is for the current chat, and which template formatted it."""

    model: str
    prompt_tokens: int
    context_length: int
    template: str
    template_source: str
    dropped_messages: int = 0


def prompt_options(runtime, conversation: Conversation, options: ChatOptions, *, continue_: bool = False,
                   reserve: int = 0) -> PromptOptions:  # fmt: skip
    """PromptOptions for this chat: the UI's choices, else the loaded model's prompt settings, else settings.yaml."""
    chat = runtime.settings.chat
    template, template_str = options.instruction_template or None, None
    if template is None:
        model_settings = runtime.models.prompt_settings  # e.g. a template chosen when the model was loaded
        template = model_settings.get("instruction_template") or chat.instruction_template or None
        template_str = model_settings.get("instruction_template_str")
    return PromptOptions(
        mode=conversation.mode,
        instruction_template=template,
        instruction_template_str=template_str,
        character=conversation.character,
        name1=options.name1 or None,
        user_bio=options.user_bio if options.user_bio else chat.user_bio,
        chat_instruct_command=options.chat_instruct_command or chat.chat_instruct_command,
        continue_=continue_,
        reserve_tokens=reserve,
    )


def measure(runtime, conversation: Conversation, options: ChatOptions, reserve: int = 0) -> ContextInfo:
    """The prompt the next reply would get, counted; ModelNotLoaded or ContextTooLong when it cannot be built."""
    prepared, loader = _prepare(runtime, conversation, options, False, reserve)
    return _context_info(loader.info, prepared)


def reply_request(runtime, conversation: Conversation, options: ChatOptions, params: ReplyParams,
                  continue_: bool = False) -> tuple[GenerationRequest, ContextInfo]:  # fmt: skip
    """The scheduler request for the next reply (validated) and the context it fills."""
    loader = runtime.models.loader
    reserve = min(params.max_new_tokens, loader.info.context_length // 2) if loader else 0
    prepared, loader = _prepare(runtime, conversation, options, continue_, reserve)
    info = loader.info
    room = max(info.context_length - len(prepared.ids), 1)
    request = GenerationRequest(
        prompt_ids=tuple(prepared.ids),
        sampling=params.sampling,
        max_tokens=min(params.max_new_tokens, room),
        stop=tuple(params.stop) + prepared.stop,
        ban_eos=params.ban_eos,
        model_id=info.name,
        trim_leading_space=prepared.trim_reply_start,
    )
    request.validate(info.vocab_size)
    return request, _context_info(info, prepared)


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


def detected_template(runtime) -> tuple[str, str] | None:
    """(template name, source) the loaded model's instruct prompts use, or None with no model loaded."""
    from modules.chat_prompt import model_prompt_info

    loader = runtime.models.loader
    if loader is None:
        return None
    options = prompt_options(runtime, Conversation("instruct", DEFAULT_CHARACTER), ChatOptions())
    rendered = runtime.prompts.render([{"role": "user", "content": "Hi"}], options, model_prompt_info(loader))
    return rendered.template_name, rendered.template_source


def _prepare(runtime, conversation, options, continue_, reserve):
    loader = runtime.models.loader
    if loader is None:
        raise ModelNotLoaded("no model is loaded: pick one in the Model tab")
    opts = prompt_options(runtime, conversation, options, continue_=continue_, reserve=reserve)
    try:
        return prepare_prompt(runtime.prompts, conversation.messages, opts, loader), loader
    except ContextTooLong:
        if reserve == 0:
            raise
    # Even the latest turn leaves less room than max_new_tokens: reply in whatever room is left.
    opts = dataclasses.replace(opts, reserve_tokens=0)
    return prepare_prompt(runtime.prompts, conversation.messages, opts, loader), loader


def _context_info(info, prepared: PreparedPrompt) -> ContextInfo:
    return ContextInfo(info.name, len(prepared.ids), info.context_length, prepared.template,
                       prepared.template_source, prepared.dropped_messages)  # fmt: skip


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
        try:
            request, self.context = reply_request(self.runtime, conversation, options, params, continue_)
            handle = self.runtime.scheduler.submit(request)
        except ModelChanged:  # the model was swapped while the prompt was prepared: prepare it for the new one
            request, self.context = reply_request(self.runtime, conversation, options, params, continue_)
            handle = self.runtime.scheduler.submit(request)
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
