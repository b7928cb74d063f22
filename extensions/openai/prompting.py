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
    if isinstance(req.function_call, dict):
        raise APIError(400, "the legacy function_call is not supported; use tools and tool_choice",
                       param="function_call")  # fmt: skip
    if req.audio is not None or any(m != "text" for m in req.modalities or ()):
        raise APIError(400, "only text output is supported", param="modalities")
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError(400, "top_logprobs requires logprobs to be true", param="top_logprobs")
    if req.top_logprobs is not None and not 0 <= req.top_logprobs <= MAX_TOP_LOGPROBS:
        raise APIError(400, f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}]", param="top_logprobs")
    if req.functions:
        # The legacy `functions` with function_call "auto": answering in plain text is a valid reply.
        log.debug("legacy functions given: answering without function calls")


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
        flat.append({"role": role, "content": text, **_tool_fields(message)})
    return flat


def _tool_fields(message: ChatMessage) -> dict:
    """An assistant's tool_calls and a tool result's tool_call_id and name, for the chat template."""
    fields: dict = {}
    if message.tool_calls:
        fields["tool_calls"] = [
            {"id": call.id, "type": "function",
             "function": {"name": call.function.name, "arguments": call.function.arguments}}
            for call in message.tool_calls
        ]  # fmt: skip
    if message.tool_call_id is not None:
        fields["tool_call_id"] = message.tool_call_id
    if message.name is not None and message.role in ("tool", "function"):
        fields["name"] = message.name
    return fields


def _text_part(part: dict, i: int, j: int) -> str:
    kind = part.get("type")
    where = f"messages[{i}].content[{j}]"
    if kind == "text" and isinstance(part.get("text"), str):
        return part["text"]
    if kind in UNSUPPORTED_PARTS:
        raise APIError(400, f"{UNSUPPORTED_PARTS[kind]} input is not supported by this model", param=where)
    raise APIError(400, f"content parts must be {{'type': 'text', 'text': ...}}, got type {kind!r}", param=where)
