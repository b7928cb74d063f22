"""Grammar masks on the worker: fill each constrained row's allowed-token bitmask, apply it, advance the matcher.

Only cheap work happens here (llguidance computes a mask in tens of microseconds; compiling happened in the
request thread). Rows without a constraint are untouched.
"""
from __future__ import annotations

import torch

from modules.loaders.sampling import NEG_INF

_SHIFTS = torch.arange(32, dtype=torch.int32)


def constrained_rows(rows) -> list[int]:
    """Indices of the rows that carry a grammar matcher."""
    return [i for i, row in enumerate(rows) if row.spec.matcher is not None]


def apply_masks(logits: torch.Tensor, rows, indices: list[int]) -> torch.Tensor:
    """Set every token the rows' grammars forbid to -inf (in place on `logits` [B, V], which the caller owns)."""
    import llguidance.numpy as lnp
    import numpy as np

    words = (rows[indices[0]].spec.matcher.vocab_size + 31) // 32  # one model: one tokenizer, one width
    bitmask = np.full((len(indices), words), -1, dtype=np.int32)
    for k, i in enumerate(indices):
        lnp.fill_next_token_bitmask(rows[i].spec.matcher.ll, bitmask, k)
    allowed = _unpack(torch.from_numpy(bitmask), logits.shape[1]).to(logits.device)  # [k, V] bool
    index = torch.tensor(indices, device=logits.device)
    logits[index] = logits[index].masked_fill(~allowed, NEG_INF)
    return logits


def advance(row, token: int) -> tuple[bool, str | None]:
    """Feed the sampled token to the row's matcher: (grammar complete, error or None)."""
    matcher = row.spec.matcher.ll
    if not matcher.consume_token(token):
        return True, f"the output left its grammar: {matcher.get_error()[:300]}"
    return matcher.is_stopped(), None


def _unpack(bitmask: torch.Tensor, width: int) -> torch.Tensor:
    """[k, W] int32 words -> [k, width] allowed flags; tokens past the mask's vocabulary are not allowed."""
    bits = ((bitmask.unsqueeze(-1) >> _SHIFTS) & 1).bool().reshape(bitmask.shape[0], -1)  # [k, 32 W]
    if bits.shape[1] >= width:
        return bits[:, :width]
    pad = torch.zeros(bits.shape[0], width - bits.shape[1], dtype=torch.bool)
    return torch.cat([bits, pad], 1)
