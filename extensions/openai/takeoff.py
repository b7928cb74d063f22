"""TitanML Takeoff's native endpoints on the API port: POST /generate, POST /generate_stream and POST /embed.

Takeoff's field names and defaults at the edge (`sampling_topk` 1, i.e. greedy; `max_new_tokens` 128; null means the
default, as takeoff-client sends unset fields), Hearth's engine requests inside. `consumer_group` names a pool entry
as `model` does elsewhere. /generate_stream speaks today's Takeoff (server-sent events whose data is the raw text)
and, for the older Iris Takeoff client of its docs, plain text: see `wants_events`.
"""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Union

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, ConfigDict, Field
from werkzeug.datastructures import MIMEAccept

from extensions.openai import embeddings
from extensions.openai.chat import sse_response
from extensions.openai.docs import documented
from extensions.openai.errors import APIError, from_domain
from extensions.openai.params import check_unknown
from extensions.openai.responses import finish_name
from extensions.openai.sse import KEEPALIVE, guarded, text_event
from extensions.openai.state import ApiState, announced, parse, serving_engine, state
from modules.constraints.grammar import Grammar
from modules.engine.base import (
    ChatRequest, CompletionRequest, Engine, Generation, OutputOptions, PromptChoices, SamplerValues, Stream,
)
from modules.errors import HearthError, InvalidParameter, ModelNotFound
from modules.generation import FinishReason, Usage
from modules.samplers import BY_NAME, check_int

log = logging.getLogger(__name__)
bp = Blueprint("takeoff", __name__)

DEFAULT_GROUP = "primary"  # Takeoff's default consumer group; Hearth's default entry unless an entry has that name
DEFAULTS = {  # Takeoff's defaults, used where a request leaves a field unset or null
    "sampling_temperature": 1.0, "sampling_topp": 1.0, "sampling_topk": 1, "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0, "max_new_tokens": 128, "min_new_tokens": 0,
}  # fmt: skip
SAMPLERS = {  # Takeoff's sampler field -> Hearth's sampler (modules/samplers.py checks the value)
    "sampling_temperature": "temperature", "sampling_topp": "top_p", "sampling_topk": "top_k",
    "repetition_penalty": "repetition_penalty", "no_repeat_ngram_size": "no_repeat_ngram_size",
}  # fmt: skip
# A parameter named by an error from below the edge -> the field a Takeoff client sent.
TAKEOFF_PARAMS = {**{hearth: takeoff for takeoff, hearth in SAMPLERS.items()}, "max_tokens": "max_new_tokens",
                  "min_tokens": "min_new_tokens", "prompt": "text", "messages": "text", "input": "text",
                  "model": "consumer_group"}  # fmt: skip
Number = Union[int, float]


def _field(name: str):
    return Field(default=None, description=f"null or unset: Takeoff's default {DEFAULTS[name]}")


class GenerateRequest(BaseModel):
    """POST /generate and /generate_stream: Takeoff's fields; null means Takeoff's default."""

    model_config = ConfigDict(strict=True, extra="allow")
    text: Union[str, list[str]] = Field(description="a prompt, or a list of prompts (answered as a list)")
    consumer_group: str | None = Field(default=None, description="the pool entry that answers; default 'primary' "
                                       "(the default entry unless one is named so)")  # fmt: skip
    sampling_temperature: Number | None = _field("sampling_temperature")
    sampling_topp: Number | None = _field("sampling_topp")
    sampling_topk: int | None = _field("sampling_topk")
    repetition_penalty: Number | None = _field("repetition_penalty")
    no_repeat_ngram_size: int | None = _field("no_repeat_ngram_size")
    max_new_tokens: int | None = _field("max_new_tokens")
    min_new_tokens: int | None = _field("min_new_tokens")
    prompt_max_tokens: int | None = Field(default=None, description="keep only the prompt's last N tokens (BOS and "
                                          "chat template not counted)")  # fmt: skip
    regex_string: str | None = None
    json_schema: Any = Field(default=None, description="ignored when regex_string is set")
    constrained_decoding_backend: str | None = Field(default=None, description="accepted and ignored")
    use_chat_template: bool | None = Field(default=None, description="render text as a user message through the "
                                           "model's chat template")  # fmt: skip
    lora_id: str | None = Field(default=None, description="not supported: a 400 when set")
    return_metadata: bool | None = Field(default=None, description="add token counts (streams: a last `metadata` "
                                         "event)")  # fmt: skip


class EmbedRequest(BaseModel):
    """POST /embed: Takeoff's embedding request."""

    model_config = ConfigDict(strict=True, extra="allow")
    text: Union[str, list[str]]
    consumer_group: str | None = Field(default=None, description="an API-model entry that embeds, or an embedding "
                                       "model; other names (such as 'primary') mean the default one")  # fmt: skip


@dataclass
class TakeoffRun:
    """Submitted generations, one Stream per text, and how to answer them."""

    model: str
    handles: list[Stream]
    single: bool  # `text` was a string: answer a string, not a list
    metadata: bool

    def answer(self, values: list):
        """`values` (one per text) shaped as `text` came: one value for a string, a list for a list."""
        return values[0] if self.single else values

    def cancel(self) -> None:
        """Stop every text's generation (a dropped client frees its batch slots)."""
        for handle in self.handles:
            handle.cancel()


@bp.post("/generate")
@documented("Takeoff: generate text for a prompt or a list of prompts", GenerateRequest, tag="Takeoff")
def generate():
    """Takeoff's buffered generation: {"text": ..., "message": ...} (a list for a list), and metadata if asked."""
    run = start_generation(state(), parse(GenerateRequest))
    try:
        results = [handle.result() for handle in run.handles]
    except BaseException:
        run.cancel()
        raise
    texts = run.answer([r.choices[0].text for r in results])
    body: dict[str, Any] = {"text": texts, "message": texts}  # `message`: the Iris Takeoff client of seed 002
    if run.metadata:
        body["metadata"] = run.answer([usage_metadata(r.usage, r.choices[0].finish_reason) for r in results])
    return jsonify(body), 200, {"X-Hearth-Model": run.model}


@bp.post("/generate_stream")
@documented("Takeoff: stream generated text (SSE whose data is the raw text, or plain text)", GenerateRequest,
            tag="Takeoff")  # fmt: skip
def generate_stream():
    """Takeoff's streamed generation of one prompt; the wire format follows `wants_events`."""
    st = state()
    req = parse(GenerateRequest)
    if isinstance(req.text, list) and len(req.text) != 1:
        raise APIError(400, "generate_stream takes one text (a string or a list of one)", param="text")
    events = wants_events(request.accept_mimetypes, req.model_fields_set | set(req.model_extra or {}))
    run = start_generation(st, req)
    headers = {"X-Hearth-Model": run.model}
    if events:
        return sse_response(guarded(_events(run, st.config.keepalive), run.cancel, _error_event), headers)
    response = Response(guarded(_plain(run), run.cancel, _end_quietly), mimetype="text/plain")
    response.headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers})
    return response


@bp.post("/embed")
@documented("Takeoff: embeddings ({\"result\": a vector for a string, a list of vectors for a list})", EmbedRequest,
            tag="Takeoff")  # fmt: skip
def embed():
    """Takeoff's embeddings, computed as /v1/embeddings computes them."""
    st = state()
    req = parse(EmbedRequest)
    check_unknown(req, st.config.strict)
    with takeoff_params():
        result = embeddings.embed(st, req.consumer_group, req.text, param="text")
    vectors = [embeddings.encoded(vector) for vector in result.vectors]
    return jsonify({"result": vectors[0] if isinstance(req.text, str) else vectors})


def wants_events(accept: MIMEAccept, fields: set[str]) -> bool:
    """Server-sent events unless the client asks for text/plain, or sends the Iris Takeoff body without asking.

    An Accept header naming text/event-stream or text/plain decides. Neither takeoff-client nor seed 002's client
    names one (both send */*), so then the body does: seed 002's client (and its curl line) sends only `text` and
    prints the response as it comes; takeoff-client sends every field, and reads events."""
    named = {value for value, quality in accept if quality > 0}
    if "text/event-stream" in named or "text/plain" in named:
        return "text/event-stream" in named
    return fields != {"text"}


@announced
def start_generation(st: ApiState, req: GenerateRequest) -> TakeoffRun:
    """Check a Takeoff request and submit every text to the engine of its consumer group."""
    check_unknown(req, st.config.strict)
    with takeoff_params():
        if req.lora_id is not None:
            raise InvalidParameter("LoRA adapters (lora_id) are not supported", param="lora_id")
        constraint = _constraint(req)
        values = checked_values(req)
        texts = [req.text] if isinstance(req.text, str) else list(req.text)
        if not texts:
            raise InvalidParameter("text must not be an empty list", param="text")
        sampling = SamplerValues(**{SAMPLERS[name]: values[name] for name in SAMPLERS})
        output = OutputOptions(max_tokens=values["max_new_tokens"], min_tokens=values["min_new_tokens"])
        engine = group_engine(req.consumer_group)
        gens = _submit(engine, texts, req, sampling, output, constraint)
    handles = [handle for gen in gens for handle in gen.handles]
    return TakeoffRun(gens[0].model, handles, isinstance(req.text, str), bool(req.return_metadata))


def checked_values(req: GenerateRequest) -> dict[str, Any]:
    """Takeoff's sampler and length fields with its defaults for null; InvalidParameter naming the field."""
    values = {name: default if getattr(req, name) is None else getattr(req, name) for name, default in DEFAULTS.items()}
    for name, sampler in SAMPLERS.items():
        BY_NAME[sampler].check(values[name], name)
    check_int("max_new_tokens", values["max_new_tokens"], 1, None)
    check_int("min_new_tokens", values["min_new_tokens"], 0, values["max_new_tokens"])
    if req.prompt_max_tokens is not None:
        check_int("prompt_max_tokens", req.prompt_max_tokens, 1, None)
    return values


def group_engine(group: str | None) -> Engine:
    """The engine of the pool entry `group` names; 'primary' (Takeoff's default) is the default entry unless an entry
    has that name."""
    try:
        return serving_engine(group or DEFAULT_GROUP)
    except ModelNotFound:
        if group not in (None, DEFAULT_GROUP):
            raise
        return serving_engine(None)


@contextmanager
def takeoff_params() -> Iterator[None]:
    """Errors raised inside name the field a Takeoff client sent (max_new_tokens, not max_tokens)."""
    try:
        yield
    except HearthError as exc:
        raise _renamed(from_domain(exc)) from None
    except APIError as exc:
        raise _renamed(exc) from None


def usage_metadata(usage: Usage, finish: FinishReason | None) -> dict:
    """Token counts of one generation, and why it ended."""
    return {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens,
            "finish_reason": finish_name(finish)}  # fmt: skip


def _renamed(error: APIError) -> APIError:
    error.param = TAKEOFF_PARAMS.get(error.param, error.param)
    return error


def _constraint(req: GenerateRequest) -> Grammar | None:
    """The decoding constraint asked for: regex_string, else json_schema (Takeoff ignores json_schema then)."""
    if req.regex_string is not None:
        return Grammar.regex(req.regex_string, param="regex_string")
    if req.json_schema is not None:
        return Grammar.json_schema(req.json_schema, param="json_schema")
    return None


def _submit(engine: Engine, texts: list[str], req: GenerateRequest, sampling: SamplerValues,
            output: OutputOptions, constraint: Grammar | None) -> list[Generation]:  # fmt: skip
    """One completion request for every text, or with use_chat_template one chat request per text."""
    limit = req.prompt_max_tokens
    if limit is not None:
        engine.capabilities.require("token_ids", "prompt_max_tokens", "truncating prompts to a number of tokens")
    if not req.use_chat_template:
        prompts = tuple(_truncated(engine, text, limit, as_ids=True) for text in texts)
        return [engine.complete(CompletionRequest(prompts, sampling=sampling, output=output, constraint=constraint))]
    gens: list[Generation] = []
    try:
        for text in texts:
            message = {"role": "user", "content": _truncated(engine, text, limit, as_ids=False)}
            gens.append(engine.chat(ChatRequest((message,), PromptChoices(mode="instruct"), sampling, output,
                                                constraint=constraint)))  # fmt: skip
    except BaseException:
        for gen in gens:
            gen.cancel()
        raise
    return gens


def _truncated(engine: Engine, text: str, limit: int | None, *, as_ids: bool):
    """`text`, or when its own tokens exceed `limit`, its last `limit` tokens (as ids behind the tokens the model
    puts in front, such as BOS; or as text)."""
    if limit is None:
        return text
    ids = engine.encode(text)
    start = engine.encode("")  # what the tokenizer puts in front of any text (BOS), if anything
    head = start if start and ids[: len(start)] == start else []
    own = ids[len(head) :]
    if len(own) <= limit:
        return text
    tail = own[len(own) - limit :]
    return tuple(head + tail) if as_ids else engine.decode(tail)


def _events(run: TakeoffRun, keepalive: float) -> Iterator[str]:
    """Today's Takeoff stream: one event per text delta (its data the raw text), then metadata if asked."""
    handle, finish = run.handles[0], None
    for delta in handle.events(idle=keepalive):
        if delta is None:
            yield KEEPALIVE  # a comment: clients skip it; a dead client is noticed while the queue is slow
            continue
        finish = delta.finish_reason or finish
        if delta.text:
            yield text_event(delta.text)
    if run.metadata:
        yield text_event(json.dumps(usage_metadata(handle.usage, finish)), "metadata")


def _plain(run: TakeoffRun) -> Iterator[str]:
    """The Iris Takeoff stream: the generated text itself, as it comes."""
    for delta in run.handles[0].events():
        if delta is not None and delta.text:
            yield delta.text


def _error_event(error: APIError) -> str:
    return text_event(json.dumps(error.to_dict(), ensure_ascii=False), "error")


def _end_quietly(error: APIError) -> str:
    log.info("generate_stream (plain text) ended early: %s", error.message)
    return ""  # plain text has no way to say it; the text just ends
