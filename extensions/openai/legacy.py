"""text-generation-webui's legacy streaming-API messages, converted to today's request models."""
from __future__ import annotations

from extensions.openai.schemas import ChatCompletionRequest, CompletionRequest
from modules.samplers import SAMPLER_NAMES

SAMPLER_KEYS = (*SAMPLER_NAMES, "seed", "ban_eos_token", "min_tokens")
GREETING_MARKER = "<|BEGIN-VISIBLE-CHAT|>"  # text-generation-webui's user side of the greeting pair


def _common(msg: dict) -> dict:
    body = {k: msg[k] for k in SAMPLER_KEYS if k in msg and msg[k] is not None}
    if msg.get("do_sample") is False:
        body["temperature"] = 0
    if isinstance(body.get("seed"), int) and body["seed"] < 0:
        del body["seed"]  # -1 means random
    stops = msg.get("stopping_strings") or msg.get("custom_stopping_strings")
    if stops:
        body["stop"] = list(stops)
    body["max_tokens"] = msg.get("max_new_tokens", 200)
    body["stream"] = True
    return body


def completion_request_from_legacy(msg: dict) -> CompletionRequest:
    """/api/v1/stream: {"prompt", "max_new_tokens", sampler keys, "stopping_strings"}."""
    return CompletionRequest.model_validate({"prompt": msg.get("prompt", ""), **_common(msg)})


def chat_request_from_legacy(msg: dict) -> tuple[ChatCompletionRequest, list[list[str]], str]:
    """/api/v1/chat-stream: returns the request, the history pairs to show, and the reply's existing prefix."""
    pairs = [list(p) for p in (msg.get("history") or {}).get("internal", [])]
    user_input = msg.get("user_input", "")
    prefix = ""
    if msg.get("regenerate") and pairs:
        user_input = pairs.pop()[0]
    if msg.get("_continue") and pairs:
        user_input, prefix = pairs.pop()
    messages = []
    for user, bot in pairs:
        if user and user != GREETING_MARKER:
            messages.append({"role": "user", "content": user})
        if bot:
            messages.append({"role": "assistant", "content": bot})
    messages.append({"role": "user", "content": user_input})
    if prefix:
        messages.append({"role": "assistant", "content": prefix})
    body = {"messages": messages, "mode": msg.get("mode", "chat"), **_common(msg)}
    for ours, theirs in (("character", "character"), ("instruction_template", "instruction_template"),
                         ("name1", "your_name"), ("name2", "name2"), ("context", "context"),
                         ("chat_instruct_command", "chat_instruct_command")):  # fmt: skip
        if msg.get(theirs):
            body[ours] = msg[theirs]
    body["continue_"] = bool(prefix)
    return ChatCompletionRequest.model_validate(body), pairs + [[user_input, prefix]], prefix


def legacy_history(pairs: list[list[str]], reply: str) -> list[list[str]]:
    """The history with the last pair's reply replaced by `reply` (so far)."""
    return [list(p) for p in pairs[:-1]] + [[pairs[-1][0], reply]]
