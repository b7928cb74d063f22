"""Next-token selection as small torch functions (gpt-fast style); one row of logits at a time.

Imported only by loaders, so torch stays out of everything else.
"""
from __future__ import annotations

from typing import Sequence

import torch

from modules.generation import SamplingParams

NEG_INF = float("-inf")


def apply_penalties(
    logits: torch.Tensor, params: SamplingParams, context: torch.Tensor, generated: torch.Tensor
) -> torch.Tensor:
    """Repetition penalty and no-repeat n-grams over prompt+output (HF semantics); presence/frequency over output
    (OpenAI semantics).

    logits: [V]; context: [T] prompt+generated ids; generated: [G] generated ids.
    """
    if params.no_repeat_ngram_size > 0:
        logits = ban_repeated_ngrams(logits, params.no_repeat_ngram_size, context)
    if params.repetition_penalty != 1.0 and context.numel():
        ids = context.unique()
        picked = logits[ids]
        picked = torch.where(picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty)
        logits = logits.index_copy(0, ids, picked)
    if (params.presence_penalty or params.frequency_penalty) and generated.numel():
        counts = torch.bincount(generated, minlength=logits.numel()).to(logits.dtype)
        logits = logits - params.frequency_penalty * counts - params.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def ban_repeated_ngrams(logits: torch.Tensor, n: int, context: torch.Tensor) -> torch.Tensor:
    """Logits [V] with -inf for every token that would complete an n-gram already in `context` [T] (HF's
    NoRepeatNGramLogitsProcessor): the tokens that followed each earlier occurrence of the last n-1 tokens."""
    if context.numel() < n:
        return logits
    windows = context.unfold(0, n, 1)  # [T-n+1, n]: every n-gram of the context
    last = context[context.numel() - n + 1 :]  # the n-1 tokens a new token would extend
    banned = windows[(windows[:, :-1] == last).all(-1), -1]
    return logits.index_fill(0, banned, NEG_INF) if banned.numel() else logits


def apply_bias_and_bans(logits: torch.Tensor, bias: dict[int, float], banned: Sequence[int]) -> torch.Tensor:
    """Add OpenAI logit_bias values and set banned ids to -inf."""
    if bias:
        ids = torch.tensor(list(bias), device=logits.device)
        logits = logits.index_add(0, ids, torch.tensor(list(bias.values()), dtype=logits.dtype, device=logits.device))
    if banned:
        logits = logits.index_fill(0, torch.tensor(list(banned), device=logits.device), NEG_INF)
    return logits


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, then top-k, top-p, typical-p and min-p, in text-generation-webui's default order."""
    logits = logits / params.temperature
    if params.top_k > 0 and params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, NEG_INF)
    if params.top_p < 1.0:
        logits = _top_p(logits, params.top_p)
    if params.typical_p < 1.0:
        logits = _typical_p(logits, params.typical_p)
    if params.min_p > 0.0:
        probs = torch.softmax(logits, -1)
        logits = logits.masked_fill(probs < params.min_p * probs.max(), NEG_INF)
    return logits


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """Pick one token id from processed logits [V]."""
    if params.greedy:
        return int(torch.argmax(logits))
    filtered = filter_logits(logits, params)
    probs = torch.softmax(filtered, -1)
    if not bool(torch.isfinite(probs).all()):
        # Settings at the float limits (a temperature or repetition penalty of 1e-300) overflow the logits: their
        # limit is the likeliest token. Found by fuzzing: multinomial raised and failed the whole batch.
        return int(torch.argmax(torch.nan_to_num(logits, nan=NEG_INF)))
    return int(torch.multinomial(probs, 1, generator=generator))


def top_logprobs(logprobs: torch.Tensor, k: int) -> list[tuple[int, float]]:
    """The k most likely (token id, logprob) pairs of a log-softmaxed row [V]."""
    if k <= 0:
        return []
    values, ids = torch.topk(logprobs, min(k, logprobs.numel()))
    return list(zip(ids.tolist(), values.tolist()))


def _top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, order = torch.sort(logits, descending=True)
    cumulative = torch.softmax(sorted_logits, -1).cumsum(-1)
    # Drop a token when the mass before it already reaches top_p; the first token always stays.
    drop = (cumulative - torch.softmax(sorted_logits, -1)) >= top_p
    drop[0] = False
    return logits.masked_fill(drop.scatter(0, order, drop), NEG_INF)


def _typical_p(logits: torch.Tensor, mass: float) -> torch.Tensor:
    logp = torch.log_softmax(logits, -1)
    p = logp.exp()
    entropy = -(torch.nan_to_num(p * logp)).sum()
    shifted = (-logp - entropy).abs()
    sorted_shift, order = torch.sort(shifted)
    cumulative = p[order].cumsum(-1)
    last = int((cumulative < mass).sum())  # keep tokens up to and including the one crossing `mass`
    drop = torch.ones_like(sorted_shift, dtype=torch.bool)
    drop[: last + 1] = False
    return logits.masked_fill(drop.scatter(0, order, drop), NEG_INF)
