"""Prompt formats: instruction templates, characters, and the instruct / chat / chat-instruct modes.

Everything renders in a Jinja2 sandbox; nothing here imports torch or transformers. See docs/prompts.md.
"""
from modules.errors import CharacterNotFound, ContextTooLong, InvalidParameter, TemplateError, TemplateNotFound
from modules.prompts.chat import DEFAULT_CHAT_TEMPLATE
from modules.prompts.store import PromptStore
from modules.prompts.types import (
    DEFAULT_CHAT_INSTRUCT_COMMAND,
    FALLBACK_TEMPLATE,
    MODES,
    Character,
    ModelPromptInfo,
    PromptOptions,
    RenderedPrompt,
    approx_token_count,
)

__all__ = [
    "DEFAULT_CHAT_INSTRUCT_COMMAND",
    "DEFAULT_CHAT_TEMPLATE",
    "FALLBACK_TEMPLATE",
    "MODES",
    "Character",
    "CharacterNotFound",
    "ContextTooLong",
    "InvalidParameter",
    "ModelPromptInfo",
    "PromptOptions",
    "PromptStore",
    "RenderedPrompt",
    "TemplateError",
    "TemplateNotFound",
    "approx_token_count",
]
