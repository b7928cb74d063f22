"""The contract between the scheduler and a model backend: the only loader API the rest of the code sees."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Protocol, Sequence

from modules.generation import SamplingParams, TokenLogprob


@dataclass(frozen=True)
class Capabilities:
    """What a loaded model can do; callers ask this, never which class it is."""

    max_batch: int = 1  # sequences that may be active at once
    logits: bool = False  # supports next_token_probs()
    prefix_cache: bool = False
    constraints: bool = False  # compile_grammar() and SequenceSpec.matcher (grammar-constrained decoding)


@dataclass(frozen=True)
class SequenceSpec:
    """One sequence to generate (a request with n choices becomes n of these)."""

    seq_id: int
    prompt_ids: tuple[int, ...]
    sampling: SamplingParams
    seed: int  # the effective seed: the request's, plus the choice index
    suppress_ids: tuple[int, ...] = ()  # token ids that must not be sampled while `suppress_until` isn't reached
    suppress_until: int = 0  # number of generated tokens before which `suppress_ids` are banned
    banned_ids: tuple[int, ...] = ()  # never sampled (e.g. EOS with ban_eos)
    logprobs: int | None = None
    matcher: Any = None  # a grammar matcher (modules.constraints.compiler.SequenceMatcher) of this sequence alone


@dataclass(frozen=True)
class TokenEvent:
    """One generated token of one sequence."""

    seq_id: int
    token_id: int
    logprob: TokenLogprob | None = None
    error: str | None = None  # set (with token_id -1) when this sequence failed and was dropped
    complete: bool = False  # the sequence's grammar is complete: it ends here (finish "stop")


@dataclass(frozen=True)
class ModelInfo:
    """Facts about a loaded model that the rest of the code needs (templates, limits, tokens)."""

    name: str
    path: Path
    loader: str
    context_length: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    bos_token: str = ""
    eos_token: str = ""
    bos_token_id: int | None = None
    chat_template: str | None = None
    generation_defaults: Mapping[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    dtype: str = "float32"
    parameters: int = 0


class Loader(Protocol):
    """A loaded model. Tokenizer methods are thread-safe; prepare/start/step/release run on the scheduler worker only."""

    name: ClassVar[str]
    capabilities: Capabilities
    info: ModelInfo

    @classmethod
    def load(cls, path: Path, name: str, options: Mapping[str, Any]) -> "Loader":
        """Load the model at `path`; raise ModelLoadError with a clear cause."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Tokenize; BOS/EOS only when asked (chat templates render BOS themselves)."""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Detokenize."""

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes one token stands for (for OpenAI's logprobs `bytes`)."""

    def prepare(self) -> None:
        """Finish setting up on the worker thread, before the first step (may be called again: then a no-op)."""

    def start(self, spec: SequenceSpec) -> None:
        """Admit a sequence; its prefill may run inside later step() calls."""

    def step(self) -> list[TokenEvent]:
        """Advance every admitted sequence by at most one token."""

    def release(self, seq_id: int) -> None:
        """Drop a sequence (finished or cancelled) and free its cache at once."""

    def active(self) -> int:
        """Number of admitted sequences."""

    def reset(self) -> None:
        """Drop every sequence after an error left the batch in an unknown state."""

    def next_token_probs(self, prompt_ids: Sequence[int], sampling: SamplingParams | None, top: int) -> list:
        """Top next-token (id, probability) pairs after the prompt, raw or after sampling settings."""

    def prompt_logprobs(self, prompt_ids: Sequence[int], top: int) -> list[TokenLogprob]:
        """Logprob of each prompt token given those before it (first: None), with top alternatives."""

    def unload(self) -> None:
        """Free the weights."""

    # Loaders with Capabilities.constraints also have (request threads):
    #     def compile_grammar(self, grammar: Grammar) -> CompiledGrammar

