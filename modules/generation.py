"""Plain data types for a generation: what is asked (GenerationRequest) and what comes back (Delta, Usage).

Every layer speaks these types; none of them knows about HTTP, Gradio or torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Mapping

from modules.errors import InvalidParameter
from modules.samplers import SAMPLERS, SamplerFields, check_int, check_range

# OpenAI caps logit_bias at +-100 and top_logprobs at 20; we keep the same limits.
MAX_LOGIT_BIAS = 100.0
MAX_TOP_LOGPROBS = 20
MAX_CHOICES = 128


class FinishReason(str, Enum):
    """Why a choice ended, with OpenAI's wire names."""

    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"  # the client went away or asked to stop; never reported to a live client


@dataclass(frozen=True)
class SamplingParams(SamplerFields):
    """How the next token is chosen (the samplers of modules/samplers.py, then these); temperature 0 is greedy."""

    logit_bias: Mapping[int, float] = field(default_factory=lambda: MappingProxyType({}))
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        """True when sampling reduces to argmax."""
        return self.temperature == 0 or self.top_k == 1

    def validate(self, vocab_size: int | None = None) -> None:
        """Raise InvalidParameter naming the first out-of-range value."""
        for sampler in SAMPLERS:
            sampler.check(getattr(self, sampler.name))
        if self.seed is not None:
            check_int("seed", self.seed, -(2**63), 2**64 - 1)
        for token, bias in self.logit_bias.items():
            if not isinstance(token, int) or isinstance(token, bool) or token < 0:
                raise InvalidParameter(f"logit_bias keys must be token ids, got {token!r}", param="logit_bias")
            if vocab_size is not None and token >= vocab_size:
                raise InvalidParameter(
                    f"logit_bias token id {token} is outside the vocabulary (size {vocab_size})", param="logit_bias"
                )
            check_range("logit_bias", bias, -MAX_LOGIT_BIAS, MAX_LOGIT_BIAS)


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt (already tokenized) and how to continue it; `n` independent choices."""

    prompt_ids: tuple[int, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int | None = None  # None: until the context window is full
    min_tokens: int = 0  # EOS, stop ids and stop strings are ignored before this many tokens
    n: int = 1
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ban_eos: bool = False  # never end on the model's EOS (ignore_eos)
    logprobs: int | None = None  # None: none; 0: the chosen token's; k: also the top k alternatives
    model_id: str | None = None  # the model the prompt was tokenized for; a swap in between is refused
    skip_special_tokens: bool = True
    trim_leading_space: bool = False  # drop spaces at the start of each choice's text (chat-mode replies)
    # A compiled grammar (modules.constraints.compiler.CompiledGrammar): every choice's output stays in it and
    # ends when it is complete; the grammar alone decides the end, so min_tokens and ban_eos do not apply.
    constraint: object | None = None

    def validate(self, vocab_size: int | None = None) -> None:
        """Raise InvalidParameter naming the first invalid field."""
        if not self.prompt_ids:
            raise InvalidParameter("the prompt is empty", param="prompt")
        if vocab_size is not None:
            bad = next((t for t in self.prompt_ids if not 0 <= t < vocab_size), None)
            if bad is not None:
                raise InvalidParameter(f"token id {bad} is outside the vocabulary (size {vocab_size})", param="prompt")
        if self.max_tokens is not None:
            check_int("max_tokens", self.max_tokens, 1, None)
        check_int("min_tokens", self.min_tokens, 0, None)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise InvalidParameter("min_tokens must not exceed max_tokens", param="min_tokens")
        check_int("n", self.n, 1, MAX_CHOICES)
        if self.logprobs is not None:
            check_int("logprobs", self.logprobs, 0, MAX_TOP_LOGPROBS)
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise InvalidParameter("stop strings must be non-empty strings", param="stop")
        for t in self.stop_token_ids:
            check_int("stop_token_ids", t, 0, (vocab_size - 1) if vocab_size else None)
        self.sampling.validate(vocab_size)


@dataclass(frozen=True)
class TokenLogprob:
    """A token's log-probability under the model, with the top alternatives at that position."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Delta:
    """New output for one choice: text, the tokens that produced it, and finish_reason on the last one."""

    index: int
    text: str = ""
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: FinishReason | None = None


@dataclass(frozen=True)
class Usage:
    """Token counts as OpenAI reports them."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Choice:
    """One finished choice of a non-streamed generation."""

    index: int
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] | None
    finish_reason: FinishReason


@dataclass(frozen=True)
class Completion:
    """Every choice of a finished generation and its usage."""

    choices: tuple[Choice, ...]
    usage: Usage
