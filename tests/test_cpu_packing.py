"""PackedLinear: the same numbers as the nn.Linear it replaces, and only dtypes this CPU's oneDNN runs are packed."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from modules.loaders.cpu_packing import FusedMember, PackedLinear, dtype_packable, pack_linears

# 16-bit packing needs AVX-512 or AVX-NE-CONVERT; on other CPUs those models stay unpacked (tested below).
PACKABLE_16 = next((d for d in (torch.bfloat16, torch.float16) if dtype_packable(d)), None)
needs_16_bit = pytest.mark.skipif(PACKABLE_16 is None, reason="this CPU's oneDNN has no bf16/fp16 kernel")


def same_numbers(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical for 16-bit (F.linear runs oneDNN too); fp32 F.linear is MKL's sgemm, another summation order."""
    return torch.equal(a, b) if a.dtype != torch.float32 else torch.allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_equals_linear(dtype, bias):
    if not dtype_packable(dtype):
        pytest.skip(f"this CPU's oneDNN has no {dtype} kernel")
    torch.manual_seed(0)
    linear = nn.Linear(96, 40, bias=bias).to(dtype)
    packed = PackedLinear(linear)
    for shape in [(1, 96), (5, 96), (2, 7, 96)]:
        x = torch.randn(*shape, dtype=dtype)
        with torch.inference_mode():
            assert same_numbers(packed(x), linear(x))
    assert torch.equal(packed.weight, linear.weight) and packed.out_features == 40


def test_packed_fp32_rows_do_not_depend_on_the_batch():
    torch.manual_seed(0)
    packed = PackedLinear(nn.Linear(512, 300))
    x = torch.randn(8, 512)
    with torch.inference_mode():
        together = packed(x)
        assert all(torch.equal(together[i : i + 1], packed(x[i : i + 1])) for i in range(8))
        assert torch.equal(together[:3], packed(x[:3]))


class Tiny(nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.embed = nn.Embedding(10, 16).to(dtype)
        self.proj = nn.Linear(16, 16).to(dtype)

    def get_input_embeddings(self):
        return self.embed


def test_models_are_packed_when_this_cpu_runs_their_dtype():
    model = Tiny(torch.float32)
    assert pack_linears(model) == 1 and isinstance(model.proj, PackedLinear)
    for dtype in (torch.bfloat16, torch.float16):
        model = Tiny(dtype)
        assert pack_linears(model) == int(dtype_packable(dtype))
        assert isinstance(model.proj, PackedLinear if dtype_packable(dtype) else nn.Linear)
    assert pack_linears(Tiny(torch.float64)) == 0


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


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(PACKABLE_16, marks=needs_16_bit)])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_siblings_give_each_linears_own_output_in_any_order(bias, dtype):
    torch.manual_seed(0)
    model = Block(dtype, bias)
    plain = {name: getattr(model.attn, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj")}
    assert pack_linears(model) == 4  # q/k/v fused, o packed alone
    assert isinstance(model.attn.q_proj, FusedMember) and isinstance(model.attn.o_proj, PackedLinear)
    x, y = torch.randn(3, 32, dtype=dtype), torch.randn(3, 32, dtype=dtype)
    with torch.inference_mode():
        for order in [("q_proj", "k_proj", "v_proj"), ("v_proj", "q_proj", "k_proj"), ("k_proj", "k_proj")]:
            for name in order:
                assert same_numbers(getattr(model.attn, name)(x), plain[name](x)), name
        # a new input (or the same values in another tensor) is computed afresh, mid-group too
        assert same_numbers(model.attn.q_proj(x), plain["q_proj"](x))
        assert same_numbers(model.attn.k_proj(y), plain["k_proj"](y))
        assert same_numbers(model.attn.v_proj(x), plain["v_proj"](x))
    for name in ("q_proj", "k_proj", "v_proj"):
        assert torch.equal(getattr(model.attn, name).weight, plain[name].weight)


def test_siblings_that_cannot_share_a_weight_are_packed_alone():
    model = Block(torch.float32)
    model.attn.v_proj = nn.Linear(32, 16, bias=True)  # a bias where the others have none
    assert pack_linears(model) == 4
    assert all(isinstance(getattr(model.attn, n), PackedLinear) for n in ("q_proj", "k_proj", "v_proj"))
