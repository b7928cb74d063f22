"""Linear layers whose weights are pre-packed for oneDNN, for models on CPU.

A plain bf16/fp16 `F.linear` on CPU reorders the whole weight into oneDNN's blocked layout on every call, which
doubles the memory traffic of decoding (bound by reading the weights). Packing once at load time, as
intel-extension-for-pytorch and inductor's freezing pass do, computes the same numbers (the same kernel, minus the
reorder): measured on a 2-core AVX-512/AMX machine, all linears of a 60M Llama step went from 6.6 ms to 3.5 ms.
An fp32 `F.linear` goes to MKL's sgemm, which repacks the weight per call too: on a 2-core AVX2 machine (Zen 3) a
packed oneDNN weight took a batch-8 decode step of that Llama from 60 ms to 38 ms (lm_head 20.5 ms to 6.8 ms), and
its rows come out bit-identical whatever the batch size (sgemm's do not), so a sequence decodes the same alone or in
a batch. Its fp32 numbers differ from sgemm's in the last bits (a different summation order).
16-bit weights are packed only where this CPU's oneDNN has a kernel for them (AVX-512 or AVX-NE-CONVERT).

Sibling projections of one input (q/k/v, gate/up) are packed as one weight: a oneDNN call costs ~13 us besides the
arithmetic, which at decode batch sizes is as much as the work itself (q+k+v 62 us as three calls, 25 us as one).
"""
from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

PACKED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
FUSED_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # siblings called on the same input


class PackedLinear(nn.Module):
    """An nn.Linear stand-in holding its weight in oneDNN's packed layout (inference only)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())  # opaque [out, in]
        self.bias = linear.bias
        self._bias = None if linear.bias is None else linear.bias.detach()

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight [out, in], unpacked on demand (for code that inspects it; forward never does)."""
        return self.packed.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out], as F.linear(x, weight, bias)."""
        return _linear(x, self.packed, self._bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class FusedLinears:
    """One packed weight for sibling linears applied to the same input: one oneDNN call serves them all.

    The first member called with an input computes every member's output; the others, called with that same tensor
    object, get their slice. A member called with another tensor recomputes, so the result is always what separate
    linears would give, whatever order (or subset) the model calls them in.
    """

    def __init__(self, linears: list[nn.Linear]):
        self.sizes = [linear.out_features for linear in linears]
        self.packed = torch.ops.mkldnn._reorder_linear_weight(torch.cat([lin.weight.detach() for lin in linears]))
        biases = [linear.bias for linear in linears]
        self.bias = None if biases[0] is None else torch.cat([b.detach() for b in biases])
        self._input: torch.Tensor | None = None
        self._outputs: tuple[torch.Tensor, ...] = ()
        self._unserved = 0

    def output(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Member `index`'s output for x [..., in] -> [..., sizes[index]] (a view into the shared result)."""
        if x is not self._input:
            self._outputs = _linear(x, self.packed, self.bias).split(self.sizes, -1)
            self._input, self._unserved = x, len(self.sizes)
        out = self._outputs[index]
        self._unserved -= 1
        if self._unserved <= 0:  # every member served: hold no activations between steps
            self._input, self._outputs = None, ()
        return out

    def weight(self, index: int) -> torch.Tensor:
        """Member `index`'s dense weight [out, in]."""
        start = sum(self.sizes[:index])
        return self.packed.to_dense()[start : start + self.sizes[index]]


class FusedMember(nn.Module):
    """Stands in for one linear of a FusedLinears group (q_proj of q/k/v, ...)."""

    def __init__(self, group: FusedLinears, index: int, linear: nn.Linear):
        super().__init__()
        self.group, self.index = group, index
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = linear.bias

    @property
    def weight(self) -> torch.Tensor:
        """This member's dense weight [out, in], unpacked on demand."""
        return self.group.weight(self.index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out], as the linear it replaces."""
        return self.group.output(x, self.index)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fused with {len(self.group.sizes)}"


def _linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def dtype_packable(dtype: torch.dtype) -> bool:
    """True when oneDNN has a packed-linear kernel for `dtype` on this CPU."""
    if dtype not in PACKED_DTYPES or not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if dtype == torch.float16:
        return torch.ops.mkldnn._is_mkldnn_fp16_supported()
    return True


def pack_linears(model: nn.Module) -> int:
    """Swap every nn.Linear of a model on CPU whose dtype oneDNN runs here for a PackedLinear (sibling projections
    for one fused group); returns how many linears were swapped."""
    weight = model.get_input_embeddings().weight
    if weight.device.type != "cpu":
        return 0
    if not dtype_packable(weight.dtype):
        if weight.dtype in (torch.bfloat16, torch.float16):
            name = str(weight.dtype).removeprefix("torch.")
            log.warning("this CPU's oneDNN has no %s kernel (it needs AVX-512 or AVX-NE-CONVERT): %s runs several "
                        "times slower than float32 here, which --dtype auto picks", name, name)  # fmt: skip
        return 0
    fused = sum(_fuse_siblings(parent) for parent in list(model.modules()))
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear and dtype_packable(child.weight.dtype)
    ]
    for parent, name, child in targets:
        setattr(parent, name, PackedLinear(child))
    log.info("packed %d linear layers for oneDNN (%d of them in fused groups)", len(targets) + fused, fused)
    return len(targets) + fused


def _fuse_siblings(parent: nn.Module) -> int:
    """Replace each complete FUSED_GROUPS set of `parent`'s children with FusedMembers; returns linears fused."""
    fused = 0
    for names in FUSED_GROUPS:
        linears = [getattr(parent, name, None) for name in names]
        if not all(type(lin) is nn.Linear and dtype_packable(lin.weight.dtype) for lin in linears):
            continue
        first = linears[0]
        if any(lin.in_features != first.in_features or lin.weight.dtype != first.weight.dtype
               or (lin.bias is None) != (first.bias is None) for lin in linears):  # fmt: skip
            continue
        group = FusedLinears(linears)
        for index, (name, linear) in enumerate(zip(names, linears)):
            setattr(parent, name, FusedMember(group, index, linear))
        fused += len(linears)
    return fused
