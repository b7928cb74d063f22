"""An API model: a pool entry answered by OpenAI-compatible upstream servers (`device: api` in the serving file).

Requests go out as OpenAI chat/completions calls to the least busy member of the entry's upstreams; the answer is
held back until its first content so that a failing member is retried on the next (see modules.engine.upstream),
then streamed through the same Stream protocol local models use. The upstream renders prompts and owns the
tokenizer, so the engine declares no templates, token ids, logprobs or logits: front ends refuse what needs them.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from modules.engine.base import (
    Capabilities, ChatRequest, CompletionRequest, Engine, Generation, PromptPreview, SamplerValues, TokenProb,
    require_constraints,
)
from modules.engine.remote_stream import RemoteStream, first_content
from modules.engine.upstream import Failure, Members, start_call
from modules.errors import InvalidParameter, SettingsError, UpstreamFailed, UpstreamRejected
from modules.samplers import DEFAULTS

CAPABILITIES = Capabilities(templates=False, token_ids=False, logprobs=False, prompt_logprobs=False, logits=False,
                            max_batch=1024, embeddings=True)  # fmt: skip
UNSUPPORTED_PROMPT = ("instruction_template", "instruction_template_str", "chat_template_str", "character", "name1",
                      "name2", "context", "greeting", "user_bio", "chat_instruct_command")  # fmt: skip
OPENAI_SAMPLERS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
# vLLM's names (no_repeat_ngram_size: Hearth's and text-generation-webui's); sent only when not neutral
EXTRA_SAMPLERS = ("top_k", "min_p", "typical_p", "repetition_penalty", "no_repeat_ngram_size")


@dataclass(frozen=True)
class ApiSpec:
    """An API-model entry of the serving file."""

    name: str
    base_urls: tuple[str, ...]
    upstream_model: str
    api_key_env: str = ""  # the env var holding the upstream's token ("" for none)
    timeout: float = 30.0  # seconds to the first content (and at most between two chunks)
    cooldown: float = 5.0  # seconds a failing member is skipped
    allowed_fails: int = 1  # failures in a row before a member cools down
    version: str = ""
    fallback: tuple[str, ...] = ()
    settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # sampler defaults
    kind: str = "api"

    def token(self) -> str:
        """The upstream's token, read from its env var now ("" when none is configured)."""
        if not self.api_key_env:
            return ""
        value = os.environ.get(self.api_key_env, "")
        if not value:
            raise UpstreamFailed(f"the API model {self.name!r} has no token: its env var {self.api_key_env} is unset")
        return value


class RemoteEngine(Engine):
    """Answers an entry's requests through its upstream members."""

    def __init__(self, spec: ApiSpec):
        import httpx

        self.spec = spec
        self.members = Members(spec.base_urls, spec.cooldown, spec.allowed_fails)
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
        # One timeout for connecting and for each read: the first-content deadline is enforced on top (first_content).
        self._client = httpx.Client(timeout=httpx.Timeout(spec.timeout), limits=limits, follow_redirects=False,
                                    trust_env=False)  # fmt: skip

    @property
    def name(self) -> str:
        """The entry's name."""
        return self.spec.name

    @property
    def capabilities(self) -> Capabilities:
        """No templates, token ids, logprobs or logits: the upstream keeps them."""
        return CAPABILITIES

    def chat(self, request: ChatRequest) -> Generation:
        """Send the conversation upstream; returns once its first content has arrived (or raises)."""
        require_constraints(self.capabilities, request)  # never answer unconstrained what must be constrained
        _check_prompt_choices(request)
        body = {"messages": [dict(m) for m in request.messages], **self._options(request.sampling, request.output)}
        stream = self._open("/chat/completions", body, request.output.n, chat=True)
        return self._generation([stream], preview=self.preview(request))

    def complete(self, request: CompletionRequest) -> Generation:
        """Send every prompt upstream (one call each); returns once each has its first content."""
        require_constraints(self.capabilities, request)
        if any(not isinstance(p, str) for p in request.prompts):
            self.capabilities.require("token_ids", "prompt", "a prompt of token ids")
        body = self._options(request.sampling, request.output)
        if request.suffix is not None:
            body["suffix"] = request.suffix
        streams: list[RemoteStream] = []
        try:
            for prompt in request.prompts:
                streams.append(self._open("/completions", {"prompt": prompt, **body}, request.output.n, chat=False))
        except BaseException:
            for stream in streams:
                stream.cancel()
            raise
        gen = self._generation(streams)
        if request.echo:  # the prompt is echoed here: no upstream needs to support `echo`
            gen.echoes = [(prompt, []) for prompt in request.prompts]
        return gen

    def preview(self, request: ChatRequest) -> PromptPreview:
        """The messages as sent upstream (the upstream renders and counts the prompt itself)."""
        text = json.dumps([dict(m) for m in request.messages], ensure_ascii=False)
        return PromptPreview(text=text, tokens=0, template="upstream", template_source="api", stop=(),
                             context_length=0)  # fmt: skip

    def next_token_probs(self, prompt: str, sampling: SamplerValues | None, top: int) -> list[TokenProb]:
        """Not available: the upstream's logits do not cross HTTP."""
        self.capabilities.require("logits", "prompt", "next-token probabilities")
        return []

    def embed(self, texts: list[str], dimensions: int | None = None) -> tuple[list[list[float]], int]:
        """Embeddings of `texts` from the first member that answers, and the prompt tokens it counted."""
        body: dict[str, Any] = {"model": self.spec.upstream_model, "input": texts, "encoding_format": "float"}
        if dimensions is not None:
            body["dimensions"] = dimensions
        last: Failure | None = None
        for member in self.members.candidates():
            try:
                response = self._client.post(member.url + "/embeddings", json=body, headers=self._headers())
            except Exception as exc:
                last = Failure(f"cannot reach the upstream ({type(exc).__name__})")
                self.members.failed(member, last)
                continue
            if response.status_code == 200:
                self.members.succeeded(member)
                data = response.json()
                vectors = [item["embedding"] for item in sorted(data["data"], key=lambda d: d.get("index", 0))]
                return vectors, int((data.get("usage") or {}).get("prompt_tokens") or 0)
            from modules.engine.upstream import status_error

            error = status_error(response)
            if not isinstance(error, Failure):
                raise error
            last = error
            self.members.failed(member, error)
        raise UpstreamFailed(f"the API model {self.name!r} failed: {last.message if last else 'no upstream'}",
                             rate_limited=bool(last and last.status == 429))  # fmt: skip

    def health(self) -> list[dict]:
        """Each member's state and cool-down."""
        return self.members.states()

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def _generation(self, streams: list["RemoteStream"], preview: PromptPreview | None = None) -> Generation:
        return Generation(model=self.name, handles=streams, token_bytes=lambda _id: b"",
                          fingerprint=("api", self.spec.upstream_model), preview=preview)  # fmt: skip

    def _scrub(self, message: str) -> str:
        """`message` without the upstream's token, should an upstream ever echo it back."""
        token = os.environ.get(self.spec.api_key_env, "") if self.spec.api_key_env else ""
        return message.replace(token, "[token]") if token else message

    def _headers(self) -> dict[str, str]:
        token = self.spec.token()  # the client's own Authorization is never copied: only this one is sent
        headers = {"Accept": "text/event-stream"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _options(self, sampling: SamplerValues, output) -> dict[str, Any]:
        """The upstream request's sampler and output fields; only what is set, so the upstream's defaults apply."""
        body: dict[str, Any] = {"model": self.spec.upstream_model, "stream": True,
                                "stream_options": {"include_usage": True}}  # fmt: skip
        for key, default in self.spec.settings.items():
            body[key] = default
        for key in OPENAI_SAMPLERS + EXTRA_SAMPLERS:
            value = getattr(sampling, key)
            if value is not None and (key in OPENAI_SAMPLERS or value != DEFAULTS[key]):  # top_k 0 is top_k off
                body[key] = value
        if sampling.seed is not None and sampling.seed != -1:
            body["seed"] = sampling.seed
        if sampling.logit_bias:
            body["logit_bias"] = dict(sampling.logit_bias)
        if output.logprobs is not None:
            self.capabilities.require("logprobs", "logprobs", "logprobs")
        if output.stop_token_ids:
            self.capabilities.require("token_ids", "stop_token_ids", "stop_token_ids")
        if output.max_tokens is not None:
            body["max_tokens"] = output.max_tokens
        if output.min_tokens:
            body["min_tokens"] = output.min_tokens  # vLLM's name; an upstream without it answers 400, passed back
        if output.ban_eos:
            body["ignore_eos"] = True
        if output.n != 1:
            body["n"] = output.n
        if output.stop:
            body["stop"] = list(output.stop)
        return body

    def _open(self, path: str, body: dict, n: int, chat: bool) -> "RemoteStream":
        """A stream from the first member whose answer starts; UpstreamFailed when none does."""
        headers = self._headers()
        last: Failure | None = None
        for member in self.members.candidates():  # when all cool down: the first to recover, tried at once
            self.members.begin(member)
            call = start_call(self._client, member, path, body, headers)
            try:
                held = first_content(call, n, chat, self.spec.timeout)
            except Failure as failure:
                call.cancel()
                self.members.end(member)
                failure.message = self._scrub(failure.message)
                self.members.failed(member, failure)
                last = failure
                continue
            except UpstreamRejected as rejected:
                call.cancel()
                self.members.end(member)
                rejected.message = self._scrub(rejected.message)
                raise
            except BaseException:
                call.cancel()
                self.members.end(member)
                raise
            self.members.succeeded(member)
            return RemoteStream(call, n, chat, held, lambda m=member: self.members.end(m), self.spec.timeout,
                                self._scrub)  # fmt: skip
        raise UpstreamFailed(f"the API model {self.name!r} failed: {last.message if last else 'no upstream'}",
                             rate_limited=bool(last and last.status == 429))  # fmt: skip


def _check_prompt_choices(request: ChatRequest) -> None:
    """A chat setting only a local template can honour is a 400, never silently dropped."""
    for key in UNSUPPORTED_PROMPT:
        if getattr(request.prompt, key) is not None:
            raise InvalidParameter(f"{key} is not supported by an API model (its upstream renders the prompt)",
                                   param=key)  # fmt: skip
    if request.prompt.mode not in (None, "instruct"):
        raise InvalidParameter(f"mode {request.prompt.mode!r} is not supported by an API model (its upstream renders "
                               "the prompt; send the character's context as a system message)", param="mode")
    if request.prompt.continue_:
        raise InvalidParameter("continue_ is not supported by an API model", param="continue_")


def parse_api_spec(name: str, spec: dict, where: str, settings: dict, version: str,
                   fallback: tuple[str, ...]) -> ApiSpec:  # fmt: skip
    """An ApiSpec from a serving-file entry with `device: api` (SettingsError naming the key)."""
    known = {"device", "base_url", "upstream_model", "api_key_env", "timeout", "cooldown", "allowed_fails"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise SettingsError(f"{where}: unknown option models.{name}.{unknown[0]} for an API model "
                            f"(known: {', '.join(sorted(known | {'fallback', 'version'}))} and sampler defaults)")
    urls = spec.get("base_url")
    urls = (urls,) if isinstance(urls, str) else urls
    if not urls or not isinstance(urls, (list, tuple)) or not all(_is_http_url(u) for u in urls):
        raise SettingsError(f"{where}: models.{name}.base_url must be an http(s) URL or a list of them")
    upstream = spec.get("upstream_model", name)
    env = spec.get("api_key_env") or ""
    if not isinstance(upstream, str) or not upstream or not isinstance(env, str):
        raise SettingsError(f"{where}: models.{name}.upstream_model and api_key_env must be strings")
    if env and not os.environ.get(env):
        raise SettingsError(f"{where}: models.{name}.api_key_env names {env}, which is not set in the environment")
    numbers = {}
    for key, default, low in (("timeout", 30.0, 0.1), ("cooldown", 5.0, 0.0), ("allowed_fails", 1, 1)):
        value = spec.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
            raise SettingsError(f"{where}: models.{name}.{key} must be a number >= {low:g}")
        numbers[key] = value
    return ApiSpec(name, tuple(u.rstrip("/") for u in urls), upstream, env, float(numbers["timeout"]),
                   float(numbers["cooldown"]), int(numbers["allowed_fails"]), version, fallback,
                   MappingProxyType(dict(settings)))  # fmt: skip


def _is_http_url(value: object) -> bool:
    from urllib.parse import urlsplit

    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)
