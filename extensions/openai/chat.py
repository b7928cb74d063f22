"""POST /v1/chat/completions and POST /v1/internal/chat-prompt."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from flask import Blueprint, Response, jsonify

from extensions.openai import responses as R
from extensions.openai.params import check_unknown, generation_request
from extensions.openai.prompting import check_supported, prepare_chat_prompt
from extensions.openai.schemas import ChatCompletionRequest
from extensions.openai.sse import KEEPALIVE, event, stream
from extensions.openai.state import (
    ApiState, announced, entry_headers, parse, retried_on_model_change, serving_entry, state,
)
from modules.chat_prompt import PreparedPrompt
from modules.handle import Handle

bp = Blueprint("chat", __name__)


@dataclass
class Run:
    """A submitted generation and what its response needs; shared by the HTTP and WebSocket transports."""

    handle: Handle
    meta: R.ResponseMeta
    token_bytes: Callable[[int], bytes]
    include_usage: bool
    headers: dict
    chunks: Callable[[], Iterator[dict | None]]  # stream chunk bodies; None means "idle, send a keep-alive"
    body: Callable[[], dict]  # the non-streamed body
    cancel: Callable[[], None]


@announced
@retried_on_model_change
def start_chat(st: ApiState, req: ChatCompletionRequest) -> Run:
    """Validate, render, tokenize and submit a chat request (in the request thread)."""
    runtime = st.runtime
    check_unknown(req, st.config.strict)
    check_supported(req)
    entry, loader = serving_entry(req.model)
    given = [v for v in (req.max_completion_tokens, req.max_tokens, req.max_new_tokens) if v is not None]
    max_tokens = given[0] if given else runtime.settings.generation.max_new_tokens  # 0 is a 400, not "unset"
    prepared = prepare_chat_prompt(runtime, req, loader, max_tokens, entry.manager.prompt_settings)
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    gen = generation_request(
        req, prepared.ids, loader.info, runtime.settings.generation, max_tokens=max_tokens, logprobs=logprobs,
        extra_stop=prepared.stop, trim_leading_space=prepared.trim_reply_start,
    )  # fmt: skip
    handle = entry.scheduler.submit(gen)
    headers = {**_template_header(prepared), **entry_headers(entry, loader)}
    meta = R.ResponseMeta.new("chatcmpl", headers["X-Hearth-Model"], [loader.info.dtype, prepared.template])
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    keepalive = st.config.keepalive
    return Run(
        handle=handle, meta=meta, token_bytes=loader.token_bytes, include_usage=include_usage,
        headers=headers,
        chunks=lambda: chat_chunks(meta, handle, include_usage, loader.token_bytes, keepalive),
        body=lambda: R.chat_completion(meta, handle.result(), loader.token_bytes),
        cancel=handle.cancel,
    )  # fmt: skip


@bp.post("/v1/chat/completions")
def chat_completions():
    """Chat completion, streamed as SSE when `stream` is true."""
    st = state()
    req = parse(ChatCompletionRequest)
    run = start_chat(st, req)
    if req.stream:
        return sse_response(stream(sse_events(run.chunks()), run.cancel), run.headers)
    return jsonify(run.body()), 200, run.headers


def chat_chunks(meta: R.ResponseMeta, handle: Handle, include_usage: bool, token_bytes, keepalive: float):
    """Chunk bodies: a role chunk per choice, content deltas, a finish chunk per choice, then usage if asked."""
    wants_logprobs = handle.request.logprobs is not None
    for index in range(handle.request.n):
        yield R.chat_chunk(meta, [_choice(index, {"role": "assistant", "content": "", "refusal": None})], include_usage)
    for delta in handle.events(idle=keepalive):
        if delta is None:
            yield None
            continue
        if delta.text or delta.logprobs:
            logprobs = None
            if wants_logprobs:
                logprobs = {"content": R.chat_logprob_items(delta.logprobs, token_bytes), "refusal": None}
            yield R.chat_chunk(meta, [_choice(delta.index, {"content": delta.text}, None, logprobs)], include_usage)
        if delta.finish_reason is not None:
            yield R.chat_chunk(meta, [_choice(delta.index, {}, R.finish_name(delta.finish_reason))], include_usage)
    if include_usage:
        yield R.chat_chunk(meta, [], True, handle.usage)


def _choice(index: int, delta: dict, finish: str | None = None, logprobs: dict | None = None) -> dict:
    choice = R.chat_choice_delta(index, delta, finish, logprobs)
    # text-generation-webui's streamed chunks also carried `message`; its documented sseclient example reads it.
    choice["message"] = {"role": "assistant", "content": delta.get("content", "")}
    return choice


def sse_events(chunks: Iterator[dict | None]) -> Iterator[str]:
    """Chunk bodies as SSE events; idle moments become keep-alive comments (so dead clients are noticed)."""
    for chunk in chunks:
        yield KEEPALIVE if chunk is None else event(chunk)


def sse_response(body: Iterator[str], headers: dict[str, str] | None = None) -> Response:
    """A streaming text/event-stream response that proxies must not buffer."""
    response = Response(body, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.headers.update(headers or {})
    return response


def _template_header(prepared: PreparedPrompt) -> dict[str, str]:
    return {"X-Hearth-Template": f"{prepared.template} ({prepared.template_source})"}


@bp.post("/v1/internal/chat-prompt")
def chat_prompt():
    """The prompt a chat request would be rendered to, and which template made it."""
    st = state()
    req = parse(ChatCompletionRequest)
    check_unknown(req, st.config.strict)
    entry, loader = serving_entry(req.model)
    max_tokens = req.max_completion_tokens or req.max_tokens or st.runtime.settings.generation.max_new_tokens
    prepared = prepare_chat_prompt(st.runtime, req, loader, max_tokens, entry.manager.prompt_settings)
    return jsonify(
        {"prompt": prepared.text, "tokens": len(prepared.ids), "instruction_template": prepared.template,
         "template_source": prepared.template_source, "stop": list(prepared.stop)}
    )  # fmt: skip
