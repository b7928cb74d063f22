"""The shared path from a conversation to token ids, used by the API and the UI alike."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from modules.errors import ContextTooLong
from modules.loaders.base import Loader

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedPrompt:
    """A rendered chat prompt, its token ids, which template made it, and the stop strings it implies."""

    text: str
    ids: list[int]
    template: str
    template_source: str
    stop: tuple[str, ...]
    dropped_messages: int = 0
    trim_reply_start: bool = False  # drop the reply's leading spaces (chat modes)
    tool_format: str | None = None  # the tool-call format the prompt asks for (modules.tools.formats)


def model_prompt_info(loader: Loader):
    """What the prompt store needs to know about a loaded model."""
    from modules.prompts import ModelPromptInfo

    info = loader.info
    return ModelPromptInfo(
        name=info.name,
        chat_template=info.chat_template,
        bos_token=info.bos_token,
        eos_token=info.eos_token,
        context_length=info.context_length,
        count_tokens=lambda text: len(loader.encode(text)),
    )


def prepare_prompt(prompts, messages: list[dict], options, loader: Loader) -> PreparedPrompt:
    """Render `messages` with `options` (a PromptOptions) and tokenize; ContextTooLong if it cannot fit."""
    rendered = prompts.render(messages, options, model_prompt_info(loader))
    log.info("prompt: template %s (%s), %d tokens, %d messages dropped", rendered.template_name,
             rendered.template_source, rendered.prompt_tokens, rendered.dropped_messages)  # fmt: skip
    ids = loader.encode(rendered.text)
    context = loader.info.context_length
    if len(ids) >= context:
        raise ContextTooLong(f"the prompt is {len(ids)} tokens but the model's context is {context}", param="messages")
    return PreparedPrompt(rendered.text, ids, rendered.template_name, rendered.template_source, rendered.stop,
                          rendered.dropped_messages, rendered.trim_reply_start, rendered.tool_format)  # fmt: skip
