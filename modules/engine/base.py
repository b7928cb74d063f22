"""The text-level engine interface every front end calls: a chat or completion request in, a Generation out.

Front ends (the OpenAI routes, the WebSocket and legacy routes, the Gradio chat) build these plain requests and
serialise what comes back; rendering prompts, tokenizing, defaults and stop strings happen behind the interface.
A local engine wraps a scheduler and a loader; an engine without a tokenizer (a remote OpenAI-compatible server)
declares so in its Capabilities and the interface still fits: token ids never have to cross it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Protocol

from modules.constraints.grammar import Grammar
from modules.errors import InvalidParameter
from modules.generation import Completion, Delta, Usage
from modules.tools.parser import ToolCallParser
from modules.tools.spec import Tool, ToolChoice


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do; front ends ask this, never which engine it is."""

    templates: bool = True  # renders chat prompts itself (instruction templates, characters, modes)
    token_ids: bool = True  # prompts, logit_bias and stop_token_ids as token ids; encode/decode
    logprobs: bool = True  # logprobs of generated tokens
    prompt_logprobs: bool = True  # logprobs of an echoed prompt
    logits: bool = True  # next-token probabilities (/v1/internal/logits)
    max_batch: int = 1  # requests decoded together
    embeddings: bool = False  # answers /v1/embeddings itself (Engine.embed)
    constraints: bool = False  # enforces grammars: response_format, regex, tool_choice required/named

    def require(self, name: str, param: str, what: str) -> None:
        """InvalidParameter (a 400 naming `param`) unless capability `name` is there."""
        if not getattr(self, name):
            raise InvalidParameter(f"{what} is not supported by this model", param=param)


@dataclass(frozen=True)
class SamplerValues:
    """Sampler settings a request gave; None means unset (resolved by the engine: see modules.engine.params)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    seed: int | None = None  # -1 or None: random
    logit_bias: Mapping[str, float] | None = None  # token id (as text, OpenAI's JSON) -> bias


@dataclass(frozen=True)
class OutputOptions:
    """How much to generate, how it ends and what comes with it."""

    max_tokens: int | None = None  # None: the engine's default (settings' max_new_tokens)
    min_tokens: int = 0
    n: int = 1
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ban_eos: bool = False
    logprobs: int | None = None  # None: none; 0: the chosen token's; k: and the top k
    skip_special_tokens: bool = True


@dataclass(frozen=True)
class PromptChoices:
    """How a chat becomes a prompt; None means unset (the entry's settings, then settings.yaml decide)."""

    mode: str | None = None
    instruction_template: str | None = None
    instruction_template_str: str | None = None
    chat_template_str: str | None = None
    character: str | None = None
    name1: str | None = None
    name2: str | None = None
    context: str | None = None
    greeting: str | None = None
    user_bio: str | None = None
    chat_instruct_command: str | None = None
    continue_: bool = False


@dataclass(frozen=True)
class ChatRequest:
    """A conversation to answer: {"role", "content": str} messages, assistant ones with optional `tool_calls`
    (OpenAI's shape) and tool results with `tool_call_id`."""

    messages: tuple[Mapping[str, Any], ...]
    prompt: PromptChoices = field(default_factory=PromptChoices)
    sampling: SamplerValues = field(default_factory=SamplerValues)
    output: OutputOptions = field(default_factory=OutputOptions)
    user: str | None = None  # the client's end-user id (OpenAI's `user`): sticky A/B arms
    shrink_reply: bool = False  # when even the latest turn leaves less room than max_tokens, reply in what is left
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    constraint: Grammar | None = None  # the reply's text must match (response_format, the UI's grammar field)


def require_constraints(caps: Capabilities, request: "ChatRequest | CompletionRequest") -> None:
    """InvalidParameter when `request` asks for output an engine without Capabilities.constraints cannot enforce
    (a grammar, a response_format, tools): refused, never answered unconstrained."""
    if caps.constraints:
        return
    if request.constraint is not None:
        param = request.constraint.param
    elif getattr(request, "tools", ()):
        param = "tools"
    else:
        return
    raise InvalidParameter(f"{param} is not supported by this model (it cannot constrain its output)", param=param)


@dataclass(frozen=True)
class CompletionRequest:
    """Prompts to continue: text, or token ids where the engine has them (Capabilities.token_ids)."""

    prompts: tuple[str | tuple[int, ...], ...]
    suffix: str | None = None  # fill-in-the-middle
    echo: bool = False
    sampling: SamplerValues = field(default_factory=SamplerValues)
    output: OutputOptions = field(default_factory=OutputOptions)
    user: str | None = None  # the client's end-user id (OpenAI's `user`): sticky A/B arms
    constraint: Grammar | None = None  # each continuation must match (Takeoff's json_schema / regex_string)


@dataclass(frozen=True)
class PromptPreview:
    """The prompt a chat request renders to: its text, size, template and the stop strings it implies."""

    text: str
    tokens: int
    template: str
    template_source: str
    stop: tuple[str, ...]
    context_length: int
    dropped_messages: int = 0


@dataclass(frozen=True)
class TokenProb:
    """A candidate next token: its id (None where the engine has no ids), its bytes and its probability."""

    id: int | None
    token: bytes
    probability: float


class Stream(Protocol):
    """What front ends read of one prompt's generation (modules.handle.Handle is the local engine's)."""

    usage: Usage  # final once the stream has ended

    @property
    def n(self) -> int:
        """How many choices."""

    @property
    def wants_logprobs(self) -> bool:
        """True when the deltas carry logprobs."""

    def events(self, idle: float | None = None) -> Iterator[Delta | None]:
        """Text deltas as they come (None after `idle` seconds without any); the last of a choice has its finish."""

    def result(self) -> Completion:
        """Every choice once finished, with usage."""

    def cancel(self) -> None:
        """Stop every unfinished choice."""


@dataclass
class Generation:
    """A submitted request: one Stream of text deltas per prompt, and what serialising it needs."""

    model: str  # the name of the engine (pool entry) that answers
    handles: list[Stream]
    token_bytes: Callable[[int], bytes]  # bytes of a token in the deltas' logprobs
    fingerprint: tuple[str, ...] = ()  # what determines outputs besides the request (dtype, template)
    preview: PromptPreview | None = None  # chat: the rendered prompt
    echoes: list[tuple[str, list]] | None = None  # completions with echo: (text, prompt-token logprobs) per prompt
    prompt_tokens: int = 0  # completions: the prompts' tokens (usage of an echo-only request)
    id: str | None = None  # the response id, when the engine chose it (an A/B split logs under it)
    tool_parser: Callable[[], ToolCallParser] | None = None  # chat with tools: a parser per choice reads calls

    def cancel(self) -> None:
        """Stop every choice (a dropped client frees its batch slots)."""
        for handle in self.handles:
            handle.cancel()


class Engine(ABC):
    """Answers chat and completion requests for one pool entry."""

    @property
    @abstractmethod
    def name(self) -> str | None:
        """The name clients send as `model`; None when an unnamed engine has nothing loaded."""

    @property
    @abstractmethod
    def capabilities(self) -> Capabilities:
        """What the engine can do now (ModelNotLoaded when it has no model)."""

    @abstractmethod
    def chat(self, request: ChatRequest) -> Generation:
        """Render, check and submit a chat request."""

    @abstractmethod
    def preview(self, request: ChatRequest) -> PromptPreview:
        """The prompt `request` renders to, without generating."""

    @abstractmethod
    def complete(self, request: CompletionRequest) -> Generation:
        """Check and submit every prompt of a completion request."""

    @abstractmethod
    def next_token_probs(self, prompt: str, sampling: SamplerValues | None, top: int) -> list[TokenProb]:
        """The `top` likeliest next tokens after `prompt`, raw or after `sampling`."""

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` as a completion prompt would be tokenized (engines with token ids only)."""
        self.capabilities.require("token_ids", "text", "tokenizing")
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        """Text of token ids (engines with token ids only)."""
        self.capabilities.require("token_ids", "tokens", "decoding token ids")
        raise NotImplementedError

    def embed(self, texts: list[str], dimensions: int | None = None) -> tuple[list[list[float]], int]:
        """Embedding vectors of `texts` and the tokens counted (engines with Capabilities.embeddings only)."""
        self.capabilities.require("embeddings", "model", "embeddings")
        raise NotImplementedError

    def health(self) -> list[dict]:
        """The state of what answers for this engine (an API model's upstreams); [] when nothing to report."""
        return []

    def close(self) -> None:
        """Free what the engine holds (connections); a pool entry's worker is closed by the pool."""
