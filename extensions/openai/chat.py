"""POST /v1/chat/completions and POST /v1/internal/chat-prompt."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from flask import Blueprint, Response, jsonify

from extensions.openai.docs import documented
from extensions.openai import responses as R
from extensions.openai.params import chat_request, check_unknown
from extensions.openai.prompting import check_supported
from extensions.openai.schemas import ChatCompletionRequest
from extensions.openai.sse import KEEPALIVE, event, stream
from extensions.openai.state import ApiState, announced, parse, serving_engine, state
from extensions.openai.tool_calls import event_delta, finish_with_calls, with_tool_calls
from modules.engine.base import Stream, require_constraints

bp = Blueprint("chat", __name__)


@dataclass
class Run:
    """A submitted generation and what its response needs; shared by the HTTP and WebSocket transports."""

    handle: Stream
    meta: R.ResponseMeta
    token_bytes: Callable[[int], bytes]
    include_usage: bool
    headers: dict
    chunks: Callable[[], Iterator[dict | None]]  # stream chunk bodies; None means "idle, send a keep-alive"
    body: Callable[[], dict]  # the non-streamed body
    cancel: Callable[[], None]


@announced
def start_chat(st: ApiState, req: ChatCompletionRequest) -> Run:
    """Validate and hand a chat request to the engine of the entry it names (in the request thread)."""
    check_unknown(req, st.config.strict)
    check_supported(req)
    chat, engine = chat_request(req), serving_engine(req.model)
    if chat.constraint is not None or chat.tools:
        require_constraints(engine.capabilities, chat)
    gen = engine.chat(chat)
    handle, preview, parser = gen.handles[0], gen.preview, gen.tool_parser
    meta = R.ResponseMeta.new("chatcmpl", gen.model, list(gen.fingerprint), gen.id)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    keepalive = st.config.keepalive
    headers = {"X-Hearth-Template": f"{preview.template} ({preview.template_source})", "X-Hearth-Model": gen.model}
    return Run(
        handle=handle, meta=meta, token_bytes=gen.token_bytes, include_usage=include_usage, headers=headers,
        chunks=lambda: chat_chunks(meta, handle, include_usage, gen.token_bytes, keepalive, parser),
        body=lambda: _body(meta, handle, gen.token_bytes, parser),
        cancel=gen.cancel,
    )  # fmt: skip


@bp.post("/v1/chat/completions")
@documented("Chat completion (SSE when stream=true)", ChatCompletionRequest)
def chat_completions():
    """Chat completion, streamed as SSE when `stream` is true."""
    st = state()
    req = parse(ChatCompletionRequest)
    run = start_chat(st, req)
    if req.stream:
        return sse_response(stream(sse_events(run.chunks()), run.cancel), run.headers)
    return jsonify(run.body()), 200, run.headers


def _body(meta: R.ResponseMeta, handle: Stream, token_bytes, parser) -> dict:
    completion = handle.result()
    body = R.chat_completion(meta, completion, token_bytes)
    return with_tool_calls(body, [c.text for c in completion.choices], parser) if parser else body


def chat_chunks(meta: R.ResponseMeta, handle: Stream, include_usage: bool, token_bytes, keepalive: float,
                make_parser=None):  # fmt: skip
    """Chunk bodies: a role chunk per choice, content (or tool-call) deltas, a finish chunk per choice, then usage
    if asked. With `make_parser` (a request with tools) each choice's text is read for calls as it streams."""
    wants_logprobs = handle.wants_logprobs
    parsers = [make_parser() for _ in range(handle.n)] if make_parser else None
    for index in range(handle.n):
        yield R.chat_chunk(meta, [_choice(index, {"role": "assistant", "content": "", "refusal": None})], include_usage)
    for delta in handle.events(idle=keepalive):
        if delta is None:
            yield None
            continue
        logprobs = None
        if wants_logprobs and delta.logprobs:
            logprobs = {"content": R.chat_logprob_items(delta.logprobs, token_bytes), "refusal": None}
        finish = R.finish_name(delta.finish_reason)
        if parsers is None:
            if delta.text or delta.logprobs:
                yield R.chat_chunk(meta, [_choice(delta.index, {"content": delta.text}, None, logprobs)], include_usage)
        else:
            parser = parsers[delta.index]
            events = parser.feed(delta.text) + (parser.finish() if finish is not None else [])
            for i, ev in enumerate(events):
                yield R.chat_chunk(meta, [_choice(delta.index, event_delta(ev), None, logprobs if i == 0 else None)],
                                   include_usage)  # fmt: skip
            if logprobs and not events:
                yield R.chat_chunk(meta, [_choice(delta.index, {}, None, logprobs)], include_usage)
            finish = finish_with_calls(finish, parser)
        if finish is not None:
            yield R.chat_chunk(meta, [_choice(delta.index, {}, finish)], include_usage)
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


@bp.post("/v1/internal/chat-prompt")
@documented("The prompt a chat request renders to", ChatCompletionRequest, tag="Internal")
def chat_prompt():
    """The prompt a chat request would be rendered to, and which template made it."""
    st = state()
    req = parse(ChatCompletionRequest)
    check_unknown(req, st.config.strict)
    preview = serving_engine(req.model).preview(chat_request(req))
    return jsonify(
        {"prompt": preview.text, "tokens": preview.tokens, "instruction_template": preview.template,
         "template_source": preview.template_source, "stop": list(preview.stop)}
    )  # fmt: skip
