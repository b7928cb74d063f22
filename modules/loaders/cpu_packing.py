"""Linear layers whose weights are pre-packed for oneDNN, for 16-bit models on CPU.

A plain bf16/fp16 `F.linear` on CPU reorders the whole weight into oneDNN's blocked layout on every call, which
doubles the memory traffic of decoding (bound by reading the weights). Packing once at load time, as
intel-extension-for-pytorch and inductor's freezing pass do, computes the same numbers (the same kernel, minus the
reorder): measured on a 2-core AVX-512/AMX machine, all linears of a 60M Llama step went from 6.6 ms to 3.5 ms.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

PACKED_DTYPES = (torch.bfloat16, torch.float16)


class PackedLinear(nn.Module):
    """An nn.Linear stand-in holding its weight in oneDNN's packed layout (inference only)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())  # opaque [out, in]
        self.bias = linear.bias

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight [out, in], unpacked on demand (for code that inspects it; forward never does)."""
        return self.packed.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out], as F.linear(x, weight, bias)."""
        bias = None if self.bias is None else self.bias.detach()
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def packable(model: nn.Module) -> bool:
    """True for a model on CPU in bf16/fp16 when this torch build has oneDNN."""
    weight = model.get_input_embeddings().weight
    return weight.device.type == "cpu" and weight.dtype in PACKED_DTYPES and torch.backends.mkldnn.is_available()


def pack_linears(model: nn.Module) -> int:
    """Swap every nn.Linear of a packable model for a PackedLinear; returns how many were swapped."""
    if not packable(model):
        return 0
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear and child.weight.dtype in PACKED_DTYPES
    ]
    for parent, name, child in targets:
        setattr(parent, name, PackedLinear(child))
    log.info("packed %d linear layers for oneDNN", len(targets))
    return len(targets)
