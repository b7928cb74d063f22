"""What the HTTP layer checks of a chat request before the engine sees it: supported features, text-only parts."""
from __future__ import annotations

import logging
from extensions.openai.errors import APIError
from extensions.openai.schemas import ChatCompletionRequest, ChatMessage
from modules.generation import MAX_TOP_LOGPROBS

log = logging.getLogger(__name__)

UNSUPPORTED_PARTS = {"image_url": "image", "input_audio": "audio", "file": "file", "video_url": "video"}


def check_supported(req: ChatCompletionRequest) -> None:
    """Refuse, with a 400, what Hearth cannot honour rather than silently ignoring it."""
    fmt = (req.response_format or {}).get("type", "text")
    if fmt != "text":
        raise APIError(400, f"response_format '{fmt}' is not supported yet; only 'text'", param="response_format")
    if isinstance(req.tool_choice, dict) or req.tool_choice == "required":
        raise APIError(400, "tool calling is not supported yet; tool_choice must be 'auto' or 'none'", param="tool_choice")
    if isinstance(req.function_call, dict):
        raise APIError(400, "function calling is not supported yet", param="function_call")
    if req.audio is not None or any(m != "text" for m in req.modalities or ()):
        raise APIError(400, "only text output is supported", param="modalities")
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError(400, "top_logprobs requires logprobs to be true", param="top_logprobs")
    if req.top_logprobs is not None and not 0 <= req.top_logprobs <= MAX_TOP_LOGPROBS:
        raise APIError(400, f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}]", param="top_logprobs")
    if req.tools or req.functions:
        # With tool_choice "auto" answering in plain text is a valid reply, so the tools are simply not used.
        log.debug("tools given with tool_choice=%r: answering without tool calls", req.tool_choice)


def flatten_messages(messages: list[ChatMessage]) -> list[dict]:
    """Messages as {"role", "content": str}; text parts joined; other part kinds refused by name."""
    flat = []
    for i, message in enumerate(messages):
        content = message.content
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        else:
            text = "\n".join(_text_part(part, i, j) for j, part in enumerate(content))
        role = "tool" if message.role == "function" else message.role
        flat.append({"role": role, "content": text})
    return flat


def _text_part(part: dict, i: int, j: int) -> str:
    kind = part.get("type")
    where = f"messages[{i}].content[{j}]"
    if kind == "text" and isinstance(part.get("text"), str):
        return part["text"]
    if kind in UNSUPPORTED_PARTS:
        raise APIError(400, f"{UNSUPPORTED_PARTS[kind]} input is not supported by this model", param=where)
    raise APIError(400, f"content parts must be {{'type': 'text', 'text': ...}}, got type {kind!r}", param=where)
