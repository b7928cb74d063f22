"""A running batch of sequences sharing one left-padded KV cache (continuous batching for HF models).

Each row's keys/values sit right-aligned in [B, heads, W, head_dim] per layer; `mask` [B, W] marks real
positions. A newcomer is prefilled on its own cache (in chunks), then merged by left-padding; a finished row
is sliced out at once and columns that became padding for every row are trimmed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from modules.loaders.base import SequenceSpec


class GrowableLayer(DynamicLayer):
    """A cache layer whose keys/values sit in a buffer with spare room, so each decode step writes in place.

    DynamicLayer concatenates (allocating and copying the whole cache) on every step; here a step writes one
    column. Any outside change (rows removed, columns trimmed) is noticed and the buffer is rebuilt once.
    """

    def __init__(self) -> None:
        super().__init__()
        self._kbuf: torch.Tensor | None = None  # [B, heads, capacity, head_dim]
        self._vbuf: torch.Tensor | None = None

    @classmethod
    def holding(cls, keys: torch.Tensor, values: torch.Tensor) -> "GrowableLayer":
        """A layer that starts with these keys/values."""
        layer = cls()
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        return layer

    def update(self, key_states, value_states, *args, **kwargs):
        """Append key_states/value_states [B, heads, n, head_dim]; return all keys/values so far."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.keys, self.values = key_states[:, :, :0], value_states[:, :, :0]
        used = self.keys.shape[-2]
        need = used + key_states.shape[-2]
        if not self._owns_view(need):
            self._rebuffer(need)
        self._kbuf[:, :, used:need] = key_states
        self._vbuf[:, :, used:need] = value_states
        self.keys, self.values = self._kbuf[:, :, :need], self._vbuf[:, :, :need]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the rows `indices` (one copy, spare room included, so the next step writes in place)."""
        if not self.is_initialized or self.keys.shape[-2] == 0:
            return
        used = self.keys.shape[-2]
        if self._owns_view(used):
            self._kbuf, self._vbuf = self._kbuf.index_select(0, indices), self._vbuf.index_select(0, indices)
            self.keys, self.values = self._kbuf[:, :, :used], self._vbuf[:, :, :used]
        else:
            super().batch_select_indices(indices)

    def _owns_view(self, need: int) -> bool:
        buf = self._kbuf
        return (
            buf is not None and self.keys.data_ptr() == buf.data_ptr()
            and self.keys.shape[0] == buf.shape[0] and need <= buf.shape[2]
        )  # fmt: skip

    def _rebuffer(self, need: int) -> None:
        batch, heads, used, dim = self.keys.shape
        capacity = need + max(64, need // 4)  # amortises growth; at most a quarter spare
        self._kbuf = self.keys.new_empty(batch, heads, capacity, dim)
        self._vbuf = self.values.new_empty(batch, heads, capacity, self.values.shape[-1])
        self._kbuf[:, :, :used] = self.keys
        self._vbuf[:, :, :used] = self.values


def new_cache(kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> DynamicCache:
    """A DynamicCache made of GrowableLayers, empty or holding `kv` (per layer keys, values)."""
    cache = DynamicCache()
    if kv:
        cache.layers = [GrowableLayer.holding(k, v) for k, v in kv]
        cache.layer_class_to_replicate = None
    else:
        cache.layer_class_to_replicate = GrowableLayer
    return cache


@dataclass(eq=False)
class Row:
    """One sequence's state on the worker."""

    spec: SequenceSpec
    generator: torch.Generator
    tokens: list[int]  # prompt + generated ids (the context for repetition penalty)
    generated: list[int] = field(default_factory=list)
    cached: int = 0  # tokens already in this row's KV cache
    cache: DynamicCache | None = None  # own cache while prefilling; None once merged into the batch

    @property
    def seq_id(self) -> int:
        """The sequence id from the spec."""
        return self.spec.seq_id


class KVBatch:
    """The rows being decoded together and their shared cache.

    `rows` stays aligned with the cache's batch dimension. A removed row only leaves `rows` at the next
    compaction (before a decode step or a merge), so rows finishing in the same step cost one cache copy, not one
    each.
    """

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # [B, W] long
        self._gone: set[int] = set()  # seq_ids removed but still occupying a cache row

    def __len__(self) -> int:
        return len(self.rows) - len(self._gone)

    def add(self, row: Row) -> None:
        """Merge a prefilled row (its own batch-1 cache) into the batch."""
        own, row.cache = row.cache, None
        length = own.get_seq_length()
        self.merge([row], own, torch.ones(1, length, dtype=torch.long, device=_device(own)))

    def merge(self, rows: list[Row], cache: DynamicCache, mask: torch.Tensor) -> None:
        """Append rows whose keys/values sit left-padded in `cache`, real positions marked by `mask` [k, L]."""
        self.compact()
        pad = (mask == 0)[:, None, :, None]  # [k, 1, L, 1]
        if pad.any():  # padded positions may hold NaN from fully masked attention rows; 0 * NaN would leak
            for layer in cache.layers:
                layer.keys.masked_fill_(pad, 0)
                layer.values.masked_fill_(pad, 0)
        if not self.rows:
            self.rows, self.cache, self.mask = list(rows), cache, mask
            return
        width, length = self.mask.shape[1], mask.shape[1]
        new_width = max(width, length)
        layers = []
        for old_layer, new_layer in zip(self.cache.layers, cache.layers):
            keys = torch.cat([_left_pad(old_layer.keys, new_width), _left_pad(new_layer.keys, new_width)])
            values = torch.cat([_left_pad(old_layer.values, new_width), _left_pad(new_layer.values, new_width)])
            layers.append((keys, values))
        self.cache = new_cache(layers)
        self.mask = torch.cat([F.pad(self.mask, (new_width - width, 0)), F.pad(mask, (new_width - length, 0))])
        self.rows.extend(rows)

    def index_of(self, seq_id: int) -> int | None:
        """Position of a sequence's row in the cache, or None if it is not (or no longer) in the batch."""
        if seq_id in self._gone:
            return None
        return next((i for i, r in enumerate(self.rows) if r.seq_id == seq_id), None)

    def remove(self, seq_id: int) -> Row | None:
        """Take a row out of the batch; returns it, or None if it is not here. Its cache row goes at compaction."""
        index = self.index_of(seq_id)
        if index is None:
            return None
        row = self.rows[index]
        self._gone.add(seq_id)
        if len(self._gone) == len(self.rows):
            self.rows, self.cache, self.mask, self._gone = [], None, None, set()
        return row

    def compact(self) -> None:
        """Drop the cache rows of removed sequences (one copy for all of them) and columns left as padding."""
        if not self._gone:
            return
        keep_index = [i for i, r in enumerate(self.rows) if r.seq_id not in self._gone]
        keep = torch.tensor(keep_index, device=self.mask.device)
        self.cache.batch_select_indices(keep)
        self.mask = self.mask[keep]
        self.rows = [self.rows[i] for i in keep_index]
        self._gone = set()
        self._trim()

    def row_kv(self, index: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Copies of one row's real (unpadded) keys/values, per layer: [1, heads, L, head_dim]."""
        columns = self.mask[index].nonzero()[:, 0]  # padding may sit before and inside a row (_prefill_together)
        start, count = int(columns[0]), len(columns)
        one_run = int(columns[-1]) - start + 1 == count  # then a slice copies fastest

        def copy(t: torch.Tensor) -> torch.Tensor:  # [B, heads, T, head_dim] -> [1, heads, count, head_dim]
            row = t[index : index + 1]
            return row[:, :, start : start + count].clone() if one_run else row.index_select(2, columns)

        return [(copy(layer.keys), copy(layer.values)) for layer in self.cache.layers]

    def decode_inputs(self) -> dict:
        """Model inputs for one decode step of every row: the last token of each at its own position."""
        self.compact()
        device = self.mask.device
        input_ids = torch.tensor([[r.tokens[-1]] for r in self.rows], device=device)  # [B, 1]
        positions = torch.tensor([[r.cached] for r in self.rows], device=device)  # [B, 1]
        self.mask = torch.cat([self.mask, torch.ones(len(self.rows), 1, dtype=torch.long, device=device)], 1)
        return {"input_ids": input_ids, "position_ids": positions, "attention_mask": self.mask}

    def _trim(self) -> None:
        # Columns that are padding in every remaining row can go.
        used = self.mask.sum(0) > 0
        start = int(torch.nonzero(used)[0]) if used.any() else self.mask.shape[1]
        if start:
            self.mask = self.mask[:, start:]
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, start:]
                layer.values = layer.values[:, :, start:]


def stack_caches(caches: list[DynamicCache | None], lengths: list[int]) -> tuple[DynamicCache, torch.Tensor]:
    """One cache holding each row's cached keys/values right-aligned in P = max(lengths) columns, and its mask [k, P].

    A row may have no cache (length 0). The rows' own caches are only read (they may be prefix-cache entries)."""
    width = max(lengths)
    template = next((c for c, n in zip(caches, lengths) if n), None)
    if template is None:
        return new_cache(), torch.zeros(len(caches), 0, dtype=torch.long)
    layers = []
    for i, layer in enumerate(template.layers):
        keys, values = [], []
        for cache, n in zip(caches, lengths):
            source = cache.layers[i] if n else layer
            keys.append(_left_pad(source.keys[:, :, source.keys.shape[2] - n :], width))
            values.append(_left_pad(source.values[:, :, source.values.shape[2] - n :], width))
        layers.append((torch.cat(keys), torch.cat(values)))
    mask = torch.zeros(len(caches), width, dtype=torch.long, device=_device(template))
    for row, n in enumerate(lengths):
        mask[row, width - n :] = 1
    return new_cache(layers), mask


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    # t: [B, heads, L, head_dim] -> [B, heads, width, head_dim]
    return F.pad(t, (0, 0, width - t.shape[2], 0))


def _device(cache: DynamicCache) -> torch.device:
    return cache.layers[0].keys.device
