"""Plain data types of the prompt layer: what a model tells us, what a request asks, what comes back."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

MODES = ("instruct", "chat", "chat-instruct")
ROLES = ("system", "developer", "user", "assistant", "tool")

# text-generation-webui's default; <|character|> becomes the bot's name and <|prompt|> the rendered chat.
DEFAULT_CHAT_INSTRUCT_COMMAND = (
    'Continue the chat dialogue below. Write a single reply for the character "<|character|>".\n\n<|prompt|>'
)
DEFAULT_NAME1 = "You"
DEFAULT_CHARACTER = "Assistant"
# Used when no template is named, the model has none and the guessing table has no match (as text-generation-webui).
FALLBACK_TEMPLATE = "Alpaca"


def approx_token_count(text: str) -> int:
    """Rough token count (about four characters a token) for models without a tokenizer at hand."""
    return (len(text) + 3) // 4


@dataclass(frozen=True)
class ModelPromptInfo:
    """What the prompt layer needs to know about the loaded model."""

    name: str  # model folder name, used for guessing
    chat_template: str | None  # the tokenizer's own Jinja chat template, if any
    bos_token: str = ""
    eos_token: str = ""
    context_length: int = 2048  # 0 or less: no limit
    count_tokens: Callable[[str], int] = approx_token_count


@dataclass(frozen=True)
class Character:
    """A chat persona from characters/ (text-generation-webui's format)."""

    name: str
    greeting: str
    context: str
    picture: Path | None
    example_dialogue: str = ""
    user_name: str | None = None  # text-generation-webui's optional `your_name`: the user's name in this chat


@dataclass(frozen=True)
class PromptOptions:
    """How a request wants its conversation turned into a prompt."""

    mode: str = "instruct"
    instruction_template: str | None = None  # a name from instruction-templates/
    instruction_template_str: str | None = None  # Jinja given by the request; wins over the name
    chat_template_str: str | None = None  # Jinja for the chat part of chat modes
    character: str | None = None  # default "Assistant" in chat modes
    name1: str | None = None  # the user's name (default "You")
    name2: str | None = None  # the bot's name (default: the character's name)
    context: str | None = None  # overrides the character's context
    greeting: str | None = None  # overrides the character's greeting
    user_bio: str = ""
    chat_instruct_command: str | None = None
    continue_: bool = False  # extend the last assistant message instead of starting a new turn
    add_generation_prompt: bool = True
    reserve_tokens: int = 0  # room kept free for the reply when truncating
    tools: tuple = ()  # modules.tools.spec.Tool offered to the model (see modules/prompts/tools.py)


@dataclass(frozen=True)
class RenderedPrompt:
    """A finished prompt and how it was made."""

    text: str
    template_name: str  # e.g. "ChatML", "model", "custom", "chat"
    template_source: str  # "request", "request-string", "model", "guess", "fallback" ("default" for chat mode)
    stop: tuple[str, ...]  # stop strings implied by the template and mode; never empty strings
    dropped_messages: int  # how many of the oldest messages truncation left out
    prompt_tokens: int  # count_tokens(text)
    # Chat modes cue the reply with "Bot:", so models start it with a space, which text-generation-webui drops.
    trim_reply_start: bool = False
    tool_format: str | None = None  # the call format the prompt asks for (modules.tools.formats), with tools
