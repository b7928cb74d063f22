"""PackedLinear: the same numbers as the nn.Linear it replaces, and only 16-bit CPU models are packed."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from modules.loaders.cpu_packing import FusedMember, PackedLinear, pack_linears


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


class Attention(nn.Module):
    def __init__(self, dtype, bias=False):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(32, n, bias=bias).to(dtype) for n in (32, 16, 16))
        self.o_proj = nn.Linear(32, 32, bias=False).to(dtype)


class Block(nn.Module):
    def __init__(self, dtype, bias=False):
        super().__init__()
        self.embed = nn.Embedding(10, 32).to(dtype)
        self.attn = Attention(dtype, bias)

    def get_input_embeddings(self):
        return self.embed


@pytest.mark.parametrize("bias", [True, False])
def test_fused_siblings_give_each_linears_own_output_in_any_order(bias):
    torch.manual_seed(0)
    model = Block(torch.bfloat16, bias)
    plain = {name: getattr(model.attn, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj")}
    assert pack_linears(model) == 4  # q/k/v fused, o packed alone
    assert isinstance(model.attn.q_proj, FusedMember) and isinstance(model.attn.o_proj, PackedLinear)
    x, y = torch.randn(3, 32, dtype=torch.bfloat16), torch.randn(3, 32, dtype=torch.bfloat16)
    with torch.inference_mode():
        for order in [("q_proj", "k_proj", "v_proj"), ("v_proj", "q_proj", "k_proj"), ("k_proj", "k_proj")]:
            for name in order:
                assert torch.equal(getattr(model.attn, name)(x), plain[name](x)), name
        # a new input (or the same values in another tensor) is computed afresh, mid-group too
        assert torch.equal(model.attn.q_proj(x), plain["q_proj"](x))
        assert torch.equal(model.attn.k_proj(y), plain["k_proj"](y))
        assert torch.equal(model.attn.v_proj(x), plain["v_proj"](x))
    for name in ("q_proj", "k_proj", "v_proj"):
        assert torch.equal(getattr(model.attn, name).weight, plain[name].weight)


def test_siblings_that_cannot_share_a_weight_are_packed_alone():
    model = Block(torch.bfloat16)
    model.attn.v_proj = nn.Linear(32, 16, bias=True).to(torch.bfloat16)  # a bias where the others have none
    assert pack_linears(model) == 4
    assert all(isinstance(getattr(model.attn, n), PackedLinear) for n in ("q_proj", "k_proj", "v_proj"))
