"""POST /v1/chat/completions and POST /v1/internal/chat-prompt."""
from __future__ import annotations

from typing import Iterator

from flask import Blueprint, Response, jsonify

from extensions.openai import responses as R
from extensions.openai.params import check_unknown, generation_request
from extensions.openai.prompting import check_supported, prepare_chat_prompt
from extensions.openai.schemas import ChatCompletionRequest
from extensions.openai.sse import KEEPALIVE, event, stream
from extensions.openai.state import parse, serving_loader, state
from modules.handle import Handle

bp = Blueprint("chat", __name__)


def _template_header(prepared) -> dict[str, str]:
    return {"X-Hearth-Template": f"{prepared.template} ({prepared.template_source})"}


@bp.post("/v1/chat/completions")
def chat_completions():
    """Chat completion, streamed as SSE when `stream` is true."""
    st = state()
    runtime = st.runtime
    req = parse(ChatCompletionRequest)
    check_unknown(req, st.config.strict)
    check_supported(req)
    loader = serving_loader(req.model)
    requested = req.max_completion_tokens or req.max_tokens or req.max_new_tokens
    max_tokens = requested or runtime.settings.generation.max_new_tokens
    prepared = prepare_chat_prompt(runtime, req, loader, max_tokens)
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    gen = generation_request(
        req, prepared.ids, loader.info, runtime.settings.generation,
        max_tokens=max_tokens, logprobs=logprobs, extra_stop=prepared.stop,
    )  # fmt: skip
    handle = runtime.scheduler.submit(gen)
    meta = R.ResponseMeta.new("chatcmpl", loader.info.name, [loader.info.dtype, prepared.template])
    headers = _template_header(prepared)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        chunks = chat_chunks(meta, handle, include_usage, loader.token_bytes, st.config.keepalive)
        return sse_response(stream(chunks, handle.cancel), headers)
    completion = handle.result()
    return jsonify(R.chat_completion(meta, completion, loader.token_bytes)), 200, headers


def chat_chunks(meta: R.ResponseMeta, handle: Handle, include_usage: bool, token_bytes, keepalive: float) -> Iterator[str]:
    """SSE events: a role chunk per choice, content deltas, a finish chunk per choice, then usage if asked."""
    wants_logprobs = handle.request.logprobs is not None
    for index in range(handle.request.n):
        delta = {"role": "assistant", "content": "", "refusal": None}
        yield event(R.chat_chunk(meta, [_choice(index, delta)], include_usage))
    for delta in handle.events(idle=keepalive):
        if delta is None:
            yield KEEPALIVE  # lets a dead client be noticed while the request waits for a slot
            continue
        if delta.text or delta.logprobs:
            logprobs = None
            if wants_logprobs:
                logprobs = {"content": R.chat_logprob_items(delta.logprobs, token_bytes), "refusal": None}
            yield event(R.chat_chunk(meta, [_choice(delta.index, {"content": delta.text}, None, logprobs)], include_usage))
        if delta.finish_reason is not None:
            finish = R.finish_name(delta.finish_reason)
            yield event(R.chat_chunk(meta, [_choice(delta.index, {}, finish)], include_usage))
    if include_usage:
        yield event(R.chat_chunk(meta, [], True, handle.usage))


def _choice(index: int, delta: dict, finish: str | None = None, logprobs: dict | None = None) -> dict:
    choice = R.chat_choice_delta(index, delta, finish, logprobs)
    # text-generation-webui's streamed chunks also carried `message`; its documented sseclient example reads it.
    choice["message"] = {"role": "assistant", "content": delta.get("content", "")}
    return choice


def sse_response(body: Iterator[str], headers: dict[str, str] | None = None) -> Response:
    """A streaming text/event-stream response that proxies must not buffer."""
    response = Response(body, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.headers.update(headers or {})
    return response


@bp.post("/v1/internal/chat-prompt")
def chat_prompt():
    """The prompt a chat request would be rendered to, and which template made it."""
    st = state()
    req = parse(ChatCompletionRequest)
    check_unknown(req, st.config.strict)
    loader = serving_loader(req.model)
    max_tokens = req.max_completion_tokens or req.max_tokens or st.runtime.settings.generation.max_new_tokens
    prepared = prepare_chat_prompt(st.runtime, req, loader, max_tokens)
    return jsonify(
        {"prompt": prepared.text, "tokens": len(prepared.ids), "instruction_template": prepared.template,
         "template_source": prepared.template_source, "stop": list(prepared.stop)}
    )  # fmt: skip
