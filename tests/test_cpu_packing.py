"""PackedLinear: the same numbers as the nn.Linear it replaces, and only 16-bit CPU models are packed."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from modules.loaders.cpu_packing import PackedLinear, pack_linears


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_equals_linear(dtype, bias):
    torch.manual_seed(0)
    linear = nn.Linear(96, 40, bias=bias).to(dtype)
    packed = PackedLinear(linear)
    for shape in [(1, 96), (5, 96), (2, 7, 96)]:
        x = torch.randn(*shape, dtype=dtype)
        with torch.inference_mode():
            assert torch.equal(packed(x), linear(x))
    assert torch.equal(packed.weight, linear.weight) and packed.out_features == 40


class Tiny(nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.embed = nn.Embedding(10, 16).to(dtype)
        self.proj = nn.Linear(16, 16).to(dtype)

    def get_input_embeddings(self):
        return self.embed


def test_only_16_bit_models_are_packed():
    assert pack_linears(Tiny(torch.float32)) == 0
    model = Tiny(torch.bfloat16)
    assert pack_linears(model) == 1 and isinstance(model.proj, PackedLinear)
