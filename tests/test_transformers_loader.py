"""Loading real tiny models: info, tokens, and clear errors for broken folders."""
from __future__ import annotations

import json
import shutil

import pytest
from conftest import greedy_tokens

from modules.errors import ModelLoadError
from modules.loaders.transformers_loader import TransformersLoader


def test_info_honours_generation_config(llama):
    info = llama.info
    end = llama.encode("<|end|>")
    assert set(info.eos_token_ids) == {llama.tokenizer.eos_token_id, end[0]}
    assert info.context_length == 512 and info.dtype == "float32" and info.device == "cpu"
    assert info.chat_template and "<|assistant|>" in info.chat_template
    assert info.bos_token == "<s>" and info.vocab_size == len(llama.tokenizer)


@pytest.mark.parametrize("fields, defaults", [
    ({}, {}),  # nothing said: the request or settings.yaml decide
    ({"do_sample": False}, {"temperature": 0.0}),  # greedy, even without a temperature
    ({"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 20},
     {"temperature": 0.7, "top_p": 0.9, "top_k": 20}),
    ({"do_sample": False, "temperature": 0.6}, {"temperature": 0.0}),
])  # fmt: skip
def test_sampler_defaults_from_generation_config(fields, defaults):
    from transformers import GenerationConfig

    from modules.loaders.transformers_loader import _generation_defaults

    assert _generation_defaults(GenerationConfig(**fields)) == defaults
    assert _generation_defaults(None) == {}


def test_gpt2_context_from_n_positions(gpt2):
    assert gpt2.info.context_length == 256


def test_encode_recognises_special_token_text_without_adding_bos(llama):
    ids = llama.encode("<s>hi")
    assert ids[0] == llama.tokenizer.hf.bos_token_id and llama.encode("hi")[0] != ids[0]


def test_token_bytes_reassemble_text(llama):
    text = "café 🙂"
    assert b"".join(llama.token_bytes(i) for i in llama.encode(text)) == text.encode()


def test_dtype_option(llama_dir):
    loader = TransformersLoader.load(llama_dir, "x", {"dtype": "bfloat16"})
    assert loader.info.dtype == "bfloat16"
    with pytest.raises(ModelLoadError, match="dtype"):
        TransformersLoader.load(llama_dir, "x", {"dtype": "float8"})


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("model_dir", ["llama_dir", "gpt2_dir"])
def test_cpu_prepack_keeps_the_output(request, model_dir, dtype):
    import torch
    from torch import nn

    from modules.loaders.cpu_packing import PackedLinear, dtype_packable

    path = request.getfixturevalue(model_dir)
    prompts = ["The quick brown fox", "Once upon a time there was", "A"]
    plain = TransformersLoader.load(path, "x", {"dtype": dtype, "cpu_prepack": False, "max_batch_size": 4})
    packed = TransformersLoader.load(path, "x", {"dtype": dtype, "max_batch_size": 4})
    packed.prepare()  # what the scheduler does on its worker thread when the model is swapped in
    modules = list(packed.engine.model.modules())
    if not dtype_packable(getattr(torch, dtype)):  # a CPU without a oneDNN kernel for it: left as it was
        assert not any(isinstance(m, PackedLinear) for m in modules)
    else:
        assert any(isinstance(m, PackedLinear) for m in modules) and not any(type(m) is nn.Linear for m in modules)
    assert packed.info.parameters == plain.info.parameters
    assert greedy_tokens(packed, prompts) == greedy_tokens(plain, prompts)


def copy_model(src, tmp_path):
    dst = tmp_path / "broken"
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda d: (d / "config.json").unlink(), "config.json is missing"),
        (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "model.safetensors").unlink(), "no weights"),
        (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:5000]), "truncated"),
        (lambda d: (d / "model.safetensors").write_bytes(b"\xff" * 64), "corrupt"),
        (lambda d: [(d / f).unlink() for f in ("tokenizer.json", "tokenizer_config.json")], "tokenizer"),
        (
            lambda d: (d / "model.safetensors.index.json").write_text(
                json.dumps({"weight_map": {"a": "model-00002-of-00002.safetensors"}})
            ),
            "missing weight shards",
        ),
        (lambda d: (d / "config.json").write_text(json.dumps({"model_type": "no-such-arch"})), "could not load"),
    ],
)
def test_broken_folder_gives_clear_error(llama_dir, tmp_path, breakage, message):
    folder = copy_model(llama_dir, tmp_path)
    breakage(folder)
    with pytest.raises(ModelLoadError, match=message) as err:
        TransformersLoader.load(folder, "broken", {})
    assert "broken" in err.value.message
