"""Keys/values of finished sequences, reused when a new prompt starts with the same tokens (chat turns)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [1, kv_heads, T, head_dim]


class PrefixCache:
    """An LRU of (token ids -> per-layer KV) bounded by entry count and bytes; worker thread only."""

    def __init__(self, max_bytes: int, max_entries: int = 8):
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[int, ...], KV] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, ids: Sequence[int], kv: KV) -> None:
        """Remember `kv` for the sequence `ids`; the tensors are kept as given (pass copies, as KVBatch.row_kv makes)."""
        key = tuple(ids)
        if not key or key in self._entries:
            return
        size = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
        if size > self.max_bytes:
            return
        self._entries[key] = list(kv)
        self._bytes += size
        while self._bytes > self.max_bytes or len(self._entries) > self.max_entries:
            self._evict()

    def lookup(self, ids: Sequence[int]) -> tuple[int, KV]:
        """(n, kv) for the longest cached prefix of `ids` (n < len(ids), so one token is left to compute)."""
        best_len, best_key = 0, None
        for key in self._entries:
            n = _common_prefix(key, ids, len(ids) - 1)
            if n > best_len:
                best_len, best_key = n, key
        if best_key is None:
            return 0, []
        self._entries.move_to_end(best_key)
        return best_len, [(k[:, :, :best_len], v[:, :, :best_len]) for k, v in self._entries[best_key]]

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()
        self._bytes = 0

    def _evict(self) -> None:
        _, kv = self._entries.popitem(last=False)
        self._bytes -= sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)


def _common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y or n >= limit:
            break
        n += 1
    return n
