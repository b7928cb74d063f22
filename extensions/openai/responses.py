"""Response and stream-chunk bodies in OpenAI's exact shapes."""
from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Sequence

from modules.generation import Completion, FinishReason, TokenLogprob, Usage

TokenBytes = Callable[[int], bytes]

HEARTH_VERSION = "0.1.0"


@dataclass(frozen=True)
class ResponseMeta:
    """What every body and chunk of one response shares."""

    id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))
    system_fingerprint: str = ""

    @classmethod
    def new(cls, prefix: str, model: str, fingerprint_parts: Sequence[str] = (),
            id: str | None = None) -> "ResponseMeta":  # fmt: skip
        """A fresh id for `model` (or the engine's `id`); the fingerprint changes when the model or its settings do."""
        digest = hashlib.sha256("|".join([HEARTH_VERSION, model, *fingerprint_parts]).encode()).hexdigest()[:10]
        return cls(id=id or f"{prefix}-{uuid.uuid4().hex}", model=model, system_fingerprint=f"fp_{digest}")


def finish_name(reason: FinishReason | None) -> str | None:
    """OpenAI's finish_reason; a generation stopped by the server (stop-generation) reads as `stop`."""
    if reason is None:
        return None
    return "stop" if reason is FinishReason.CANCELLED else reason.value


def usage_body(usage: Usage, cached_tokens: int = 0) -> dict:
    """The `usage` object."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
        },
    }  # fmt: skip


def token_text(raw: bytes) -> str:
    """A token's text for logprobs; bytes that are not whole UTF-8 characters read as `bytes:\\xNN` (OpenAI)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def chat_logprob_items(logprobs: Sequence[TokenLogprob], token_bytes: TokenBytes) -> list[dict]:
    """`logprobs.content` items: token, logprob, bytes and top_logprobs."""
    items = []
    for lp in logprobs:
        raw = token_bytes(lp.token_id)
        top = [_top_item(tid, value, token_bytes) for tid, value in lp.top]
        items.append({"token": token_text(raw), "logprob": lp.logprob, "bytes": list(raw), "top_logprobs": top})
    return items


def _top_item(token_id: int, logprob: float, token_bytes: TokenBytes) -> dict:
    raw = token_bytes(token_id)
    return {"token": token_text(raw), "logprob": logprob, "bytes": list(raw)}


def chat_completion(meta: ResponseMeta, completion: Completion, token_bytes: TokenBytes) -> dict:
    """A non-streamed chat.completion."""
    choices = []
    for choice in completion.choices:
        logprobs = None
        if choice.logprobs is not None:
            logprobs = {"content": chat_logprob_items(choice.logprobs, token_bytes), "refusal": None}
        message = {"role": "assistant", "content": choice.text, "refusal": None, "annotations": []}
        choices.append(
            {"index": choice.index, "message": message, "logprobs": logprobs,
             "finish_reason": finish_name(choice.finish_reason)}
        )  # fmt: skip
    return {
        "id": meta.id, "object": "chat.completion", "created": meta.created, "model": meta.model,
        "system_fingerprint": meta.system_fingerprint, "choices": choices, "usage": usage_body(completion.usage),
    }  # fmt: skip


def chat_chunk(meta: ResponseMeta, choices: list[dict], include_usage: bool, usage: Usage | None = None) -> dict:
    """One chat.completion.chunk; with include_usage every chunk has `usage` (null until the last)."""
    chunk = {
        "id": meta.id, "object": "chat.completion.chunk", "created": meta.created, "model": meta.model,
        "system_fingerprint": meta.system_fingerprint, "choices": choices,
    }  # fmt: skip
    if include_usage:
        chunk["usage"] = usage_body(usage) if usage is not None else None
    return chunk


def chat_choice_delta(index: int, delta: dict, finish: str | None = None, logprobs: dict | None = None) -> dict:
    """One choice entry of a chat chunk."""
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}


def completion_logprobs(logprobs: Sequence[TokenLogprob], token_bytes: TokenBytes, text_offset: int) -> dict:
    """Legacy completions `logprobs`: tokens, token_logprobs, top_logprobs ({} when none asked), text_offset."""
    tokens, values, tops, offsets = [], [], [], []
    offset = text_offset
    for lp in logprobs:
        raw = token_bytes(lp.token_id)
        tokens.append(token_text(raw))
        values.append(lp.logprob)
        tops.append({token_text(token_bytes(t)): v for t, v in lp.top})
        offsets.append(offset)
        offset += len(raw.decode("utf-8", errors="replace"))
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def completion_body(meta: ResponseMeta, choices: list[dict], usage: Usage | None, chunk: bool = False) -> dict:
    """A text_completion (or one streamed chunk of it)."""
    body = {
        "id": meta.id, "object": "text_completion", "created": meta.created, "model": meta.model,
        "system_fingerprint": meta.system_fingerprint, "choices": choices,
    }  # fmt: skip
    if usage is not None:
        body["usage"] = usage_body(usage)
    elif chunk:
        body["usage"] = None
    return body


def completion_choice(index: int, text: str, finish: str | None, logprobs: dict | None = None) -> dict:
    """One choice of a text_completion."""
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
