"""POST /v1/completions: prompt as a string, a list of strings, token ids, or lists of token ids."""
from __future__ import annotations

import queue
import threading
from typing import Iterator

from flask import Blueprint, jsonify

from extensions.openai.docs import documented
from extensions.openai import responses as R
from extensions.openai.chat import Run, sse_events, sse_response
from extensions.openai.errors import APIError
from extensions.openai.params import check_unknown, completion_request
from extensions.openai.schemas import CompletionRequest
from extensions.openai.sse import stream
from extensions.openai.state import ApiState, announced, parse, serving_engine, state
from modules.generation import Usage
from modules.engine.base import Stream

bp = Blueprint("completions", __name__)

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for the legacy completions endpoint


@bp.post("/v1/completions")
@documented("Text completion (SSE when stream=true)", CompletionRequest)
def completions():
    """Text completion for one or more prompts, streamed as SSE when `stream` is true."""
    req = parse(CompletionRequest)
    run = start_completion(state(), req)
    if req.stream:
        return sse_response(stream(sse_events(run.chunks()), run.cancel), run.headers)
    return jsonify(run.body()), 200, run.headers


@announced
def start_completion(st: ApiState, req: CompletionRequest) -> Run:
    """Validate and hand every prompt of a completion request to the engine of the entry it names."""
    check_unknown(req, st.config.strict)
    n = req.n if req.n is not None else 1
    if req.best_of is not None and req.best_of != n:
        raise APIError(400, "best_of other than n is not supported", param="best_of")
    gen = serving_engine(req.model).complete(completion_request(req, _max_tokens(req)))
    meta = R.ResponseMeta.new("cmpl", gen.model, list(gen.fingerprint), gen.id)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    headers, token_bytes, handles, echoes = {"X-Hearth-Model": gen.model}, gen.token_bytes, gen.handles, gen.echoes
    if not handles:  # echo only: the prompts scored, nothing generated
        chunks, body = _echo_only(meta, gen.prompt_tokens, n, echoes, token_bytes, req, include_usage)
        return Run(None, meta, token_bytes, include_usage, headers, chunks, body, lambda: None)
    keepalive = st.config.keepalive
    return Run(
        handle=handles[0], meta=meta, token_bytes=token_bytes, include_usage=include_usage, headers=headers,
        chunks=lambda: completion_chunks(meta, handles, n, echoes, include_usage, token_bytes, keepalive),
        body=lambda: _completion_body(meta, handles, n, echoes, token_bytes),
        cancel=gen.cancel,
    )  # fmt: skip


def _max_tokens(req: CompletionRequest) -> int:
    value = req.max_tokens if req.max_tokens is not None else (req.max_new_tokens or DEFAULT_MAX_TOKENS)
    if value < 0 or (value == 0 and not req.echo):
        raise APIError(400, f"max_tokens must be at least 1 (0 only with echo), got {value}", param="max_tokens")
    return value


def _echo_only(meta, prompt_tokens: int, n: int, echoes, token_bytes, req: CompletionRequest, include_usage: bool):
    choices = []
    for p, (text, items) in enumerate(echoes):
        logprobs = R.completion_logprobs(items, token_bytes, 0) if req.logprobs is not None else None
        choices += [R.completion_choice(p * n + j, text, "length", logprobs) for j in range(n)]
    usage = Usage(prompt_tokens, 0)

    def chunks():
        yield R.completion_body(meta, choices, None, chunk=include_usage)
        if include_usage:
            yield R.completion_body(meta, [], usage)

    return chunks, lambda: R.completion_body(meta, choices, usage)


def _completion_body(meta, handles: list[Stream], n: int, echoes, token_bytes) -> dict:
    choices = []
    prompt_tokens = completion_tokens = 0
    for p, handle in enumerate(handles):
        result = handle.result()
        prompt_tokens += result.usage.prompt_tokens
        completion_tokens += result.usage.completion_tokens
        echo_text, echo_lps = echoes[p] if echoes else ("", [])
        for choice in result.choices:
            logprobs = None
            if choice.logprobs is not None:
                logprobs = R.completion_logprobs(list(echo_lps) + list(choice.logprobs), token_bytes, 0)
            finish = R.finish_name(choice.finish_reason)
            choices.append(R.completion_choice(p * n + choice.index, echo_text + choice.text, finish, logprobs))
    return R.completion_body(meta, choices, Usage(prompt_tokens, completion_tokens))


def completion_chunks(meta, handles, n, echoes, include_usage, token_bytes, keepalive) -> Iterator[dict | None]:
    """Chunk bodies for every prompt's choices, interleaved as tokens arrive (None: idle)."""
    offsets: dict[int, int] = {}
    for p, (text, lps) in enumerate(echoes or []):
        for j in range(n):
            logprobs = R.completion_logprobs(lps, token_bytes, 0) if lps else None
            yield R.completion_body(meta, [R.completion_choice(p * n + j, text, None, logprobs)], None, include_usage)
            offsets[p * n + j] = len(text)
    for p, delta in merge_events(handles, keepalive):
        if delta is None:
            yield None
            continue
        index = p * n + delta.index
        logprobs = None
        if handles[p].wants_logprobs:
            logprobs = R.completion_logprobs(delta.logprobs, token_bytes, offsets.get(index, 0))
        offsets[index] = offsets.get(index, 0) + len(delta.text)
        choice = R.completion_choice(index, delta.text, R.finish_name(delta.finish_reason), logprobs)
        yield R.completion_body(meta, [choice], None, include_usage)
    if include_usage:
        usage = Usage(sum(h.usage.prompt_tokens for h in handles), sum(h.usage.completion_tokens for h in handles))
        yield R.completion_body(meta, [], usage)


def merge_events(handles: list[Stream], keepalive: float) -> Iterator[tuple[int, object]]:
    """(prompt index, delta) from several handles as they arrive; (-1, None) when idle for `keepalive` s."""
    if len(handles) == 1:
        for delta in handles[0].events(idle=keepalive):
            yield 0, delta
        return
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    done = object()

    def pump(p: int, handle: Stream) -> None:
        try:
            for delta in handle.events():
                inbox.put((p, delta))
        except Exception as exc:  # re-raised in the consumer's thread
            inbox.put((p, exc))
        inbox.put((p, done))

    for p, handle in enumerate(handles):
        threading.Thread(target=pump, args=(p, handle), daemon=True).start()
    remaining = len(handles)
    try:
        while remaining:
            try:
                p, item = inbox.get(timeout=keepalive)
            except queue.Empty:
                yield -1, None
                continue
            if item is done:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield p, item
    finally:
        for handle in handles:
            handle.cancel()
