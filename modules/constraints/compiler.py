"""Grammars compiled against one model's tokenizer, in request threads, with a small cache keyed by grammar.

The worker only copies a compiled matcher per sequence, fills masks and advances it (modules.loaders.grammar_mask).
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Sequence

from modules.constraints.grammar import Grammar
from modules.errors import InvalidParameter

log = logging.getLogger(__name__)

CACHE_SIZE = 64  # compiled grammars kept per model; a schema sent again compiles in no time


class SequenceMatcher:
    """One sequence's llguidance.LLMatcher and the width of its masks (the tokenizer's vocabulary)."""

    __slots__ = ("ll", "vocab_size")

    def __init__(self, ll, vocab_size: int):
        self.ll = ll
        self.vocab_size = vocab_size


class CompiledGrammar:
    """A compiled grammar; every sequence that uses it gets its own matcher (new_matcher)."""

    def __init__(self, prototype, grammar: Grammar, vocab_size: int):
        self._prototype = prototype  # never advanced itself, only copied
        self.grammar = grammar
        self.vocab_size = vocab_size

    def new_matcher(self) -> SequenceMatcher:
        """A fresh matcher at the grammar's start."""
        return SequenceMatcher(self._prototype.deep_copy(), self.vocab_size)


class GrammarCompiler:
    """Compiles grammars for one Hugging Face tokenizer; thread-safe."""

    def __init__(self, hf_tokenizer, vocab_size: int, eos_ids: Sequence[int]):
        self._hf = hf_tokenizer
        self._vocab_size = vocab_size  # the model's logits width, which may exceed the tokenizer's vocabulary
        self._eos_ids = list(eos_ids)
        self._tokenizer = None
        self._lock = threading.RLock()
        self._cache: OrderedDict[str, object] = OrderedDict()

    @property
    def tokenizer(self):
        """The llguidance.LLTokenizer (built once, on first use)."""
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = _ll_tokenizer(self._hf, self._vocab_size, self._eos_ids)
            return self._tokenizer

    def compile(self, grammar: Grammar) -> CompiledGrammar:
        """Compile (or take from the cache); InvalidParameter naming grammar.param if it cannot be enforced."""
        with self._lock:
            cached = self._cache.get(grammar.source)
            if cached is not None:
                self._cache.move_to_end(grammar.source)
                return CompiledGrammar(cached, grammar, self.tokenizer.vocab_size)
        from llguidance import LLMatcher

        matcher = LLMatcher(self.tokenizer, grammar.source, log_level=0)
        if matcher.is_error():
            raise InvalidParameter(f"{grammar.param} is invalid or cannot be enforced: {_short(matcher.get_error())}",
                                   param=grammar.param)  # fmt: skip
        with self._lock:
            self._cache[grammar.source] = matcher
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return CompiledGrammar(matcher, grammar, self.tokenizer.vocab_size)


def _ll_tokenizer(hf_tokenizer, vocab_size: int, eos_ids: list[int]):
    import llguidance.hf

    try:
        return llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=max(vocab_size, len(hf_tokenizer)),
                                            eos_token=eos_ids or None)  # fmt: skip
    except ValueError as exc:  # a slow (Python) tokenizer
        raise InvalidParameter(f"constrained output needs a fast tokenizer: {exc}", param="response_format") from None


def _short(error: str) -> str:
    """llguidance's message without its trailing grammar listing."""
    return " ".join(error.strip().splitlines()[:3])[:500]
