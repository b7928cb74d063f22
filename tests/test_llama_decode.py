"""The lean decode step gives transformers' own logits bit for bit, and steps aside for models it does not know."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import greedy_tokens

from modules.loaders.cpu_packing import pack_linears
from modules.loaders.kv_batch import new_cache
from modules.loaders.llama_decode import lean_decoder


def tiny(kind: str, attn: str = "sdpa", **extra):
    """A random tiny model of `kind` in fp32 (GQA: 4 query heads over 2 key/value heads)."""
    from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig,
                              MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)  # fmt: skip

    torch.manual_seed(0)
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=120, n_embd=32, n_layer=2, n_head=4)).eval()
    config_class, model_class = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "mistral": (MistralConfig, MistralForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }[kind]
    settings = dict(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                    initializer_range=0.3, attn_implementation=attn)  # fmt: skip
    if kind == "mistral":
        settings["sliding_window"] = None
    return model_class(config_class(**(settings | extra))).eval()


def prefilled(model, lengths: list[int]):
    """A left-padded batch of prompts of `lengths`, prefilled by the model: (cache, mask [B, W], last positions)."""
    width = max(lengths)
    ids = torch.randint(3, 120, (len(lengths), width))
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, width - n :] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    cache = new_cache()
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
    return cache, mask, torch.tensor(lengths)


def both_steps(model, lengths: list[int], steps: int = 3):
    """Logits of `steps` decode steps from the model's forward and from the lean step, on identical caches."""
    step = lean_decoder(model)
    assert step is not None
    cache, mask, positions = prefilled(model, lengths)
    theirs, ours = [], []
    caches = {"hf": cache, "lean": copy.deepcopy(cache)}
    tokens = torch.randint(3, 120, (steps, len(lengths), 1))
    with torch.inference_mode():
        for i in range(steps):
            mask = torch.cat([mask, torch.ones(len(lengths), 1, dtype=torch.long)], 1)
            pos = (positions + i)[:, None]
            out = model(input_ids=tokens[i], attention_mask=mask, position_ids=pos, past_key_values=caches["hf"],
                        use_cache=True)  # fmt: skip
            theirs.append(out.logits[:, -1, :])
            ours.append(step(tokens[i], pos, mask, caches["lean"]))
    for a, b in zip(caches["hf"].layers, caches["lean"].layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    return theirs, ours


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("lengths", [[5, 5, 5], [7, 3, 5], [4]], ids=["no-padding", "padded", "one-row"])
@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
def test_lean_step_equals_the_models_forward(kind, lengths, packed):
    model = tiny(kind)
    if packed:
        assert pack_linears(model) > 0
    theirs, ours = both_steps(model, lengths)
    for a, b in zip(theirs, ours):
        assert torch.equal(a, b)


def test_lean_step_without_gqa_and_with_biases():
    model = tiny("llama", num_key_value_heads=4, attention_bias=True, mlp_bias=True)
    for lengths in ([6, 2], [3, 3]):
        theirs, ours = both_steps(model, lengths)
        assert all(torch.equal(a, b) for a, b in zip(theirs, ours))


def spread(model):
    """The model as accelerate's device_map leaves it when its layers sit on two GPUs (the map only)."""
    model.hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "lm_head": 1}
    return model


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(lambda: tiny("gpt2"), id="gpt2"),
        pytest.param(lambda: tiny("llama", attn="eager"), id="eager-attention"),
        pytest.param(lambda: tiny("mistral", sliding_window=16), id="sliding-window"),
        pytest.param(lambda: spread(tiny("llama")), id="spread-over-devices"),
    ],
)
def test_models_it_does_not_know_keep_their_own_forward(model):
    assert lean_decoder(model()) is None


def test_an_engine_decodes_the_same_with_and_without_it(llama_dir):
    from modules.loaders.transformers_loader import TransformersLoader

    def greedy(options):
        loader = TransformersLoader.load(llama_dir, "x", {"max_batch_size": 4, **options})
        loader.prepare()
        return loader, greedy_tokens(loader, ["The quick brown fox", "Once upon a time there was", "A"], steps=24)

    lean, with_it = greedy({})
    plain, without = greedy({"lean_decode": False})
    assert lean.engine.lean_step is not None and plain.engine.lean_step is None
    assert with_it == without and all(len(tokens) == 24 for tokens in with_it)
