"""Plain data types for a generation: what is asked (GenerationRequest) and what comes back (Delta, Usage).

Every layer speaks these types; none of them knows about HTTP, Gradio or torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Mapping

from modules.errors import InvalidParameter

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
class SamplingParams:
    """How the next token is chosen; temperature 0 means greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    typical_p: float = 1.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Mapping[int, float] = field(default_factory=lambda: MappingProxyType({}))
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        """True when sampling reduces to argmax."""
        return self.temperature == 0 or self.top_k == 1

    def validate(self, vocab_size: int | None = None) -> None:
        """Raise InvalidParameter naming the first out-of-range value."""
        _check_range("temperature", self.temperature, 0.0, 100.0)
        _check_range("top_p", self.top_p, 0.0, 1.0, low_open=True)
        _check_int("top_k", self.top_k, 0, None)
        _check_range("min_p", self.min_p, 0.0, 1.0)
        _check_range("typical_p", self.typical_p, 0.0, 1.0, low_open=True)
        _check_range("repetition_penalty", self.repetition_penalty, 0.0, 100.0, low_open=True)
        _check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        if self.seed is not None:
            _check_int("seed", self.seed, -(2**63), 2**64 - 1)
        for token, bias in self.logit_bias.items():
            if not isinstance(token, int) or isinstance(token, bool) or token < 0:
                raise InvalidParameter(f"logit_bias keys must be token ids, got {token!r}", param="logit_bias")
            if vocab_size is not None and token >= vocab_size:
                raise InvalidParameter(
                    f"logit_bias token id {token} is outside the vocabulary (size {vocab_size})", param="logit_bias"
                )
            _check_range("logit_bias", bias, -MAX_LOGIT_BIAS, MAX_LOGIT_BIAS)


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

    def validate(self, vocab_size: int | None = None) -> None:
        """Raise InvalidParameter naming the first invalid field."""
        if not self.prompt_ids:
            raise InvalidParameter("the prompt is empty", param="prompt")
        if vocab_size is not None:
            bad = next((t for t in self.prompt_ids if not 0 <= t < vocab_size), None)
            if bad is not None:
                raise InvalidParameter(f"token id {bad} is outside the vocabulary (size {vocab_size})", param="prompt")
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens, 1, None)
        _check_int("min_tokens", self.min_tokens, 0, None)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise InvalidParameter("min_tokens must not exceed max_tokens", param="min_tokens")
        _check_int("n", self.n, 1, MAX_CHOICES)
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs, 0, MAX_TOP_LOGPROBS)
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise InvalidParameter("stop strings must be non-empty strings", param="stop")
        for t in self.stop_token_ids:
            _check_int("stop_token_ids", t, 0, (vocab_size - 1) if vocab_size else None)
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


def _check_range(name: str, value, low: float, high: float, *, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidParameter(f"{name} must be a finite number, got {value!r}", param=name)
    if value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise InvalidParameter(f"{name} must be in {bracket}{low:g}, {high:g}], got {value!r}", param=name)


def _check_int(name: str, value, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameter(f"{name} must be an integer, got {value!r}", param=name)
    if value < low or (high is not None and value > high):
        limit = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise InvalidParameter(f"{name} must be {limit}, got {value}", param=name)
