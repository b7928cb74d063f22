"""Convert a saved Hugging Face Llama (byte-level BPE tokenizer) into a GGUF file with the `gguf` package.

Enough of llama.cpp's convert_hf_to_gguf.py for the tests' tiny models and the bench's random ones, offline and in
about a second: the same tensor names, the same q/k row permutation (llama.cpp's rope pairs dimensions i, i+d/2 the
way HF does only after it), the tokenizer and chat template as metadata. Used by tests/ and bench/ only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7}  # gguf.LlamaFileType values

LAYER_TENSORS = {  # HF name inside model.layers.N -> GGUF name inside blk.N
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


@dataclass
class Vocab:
    """A byte-level BPE vocabulary as GGUF stores it (tokens in their byte-level form, "a b" merges)."""

    tokens: list[str]
    types: list[int]  # gguf.TokenType values
    merges: list[str]
    special: dict[str, int] = field(default_factory=dict)  # bos_token, eos_token, unk_token, pad_token -> id
    chat_template: str | None = None
    add_bos: bool = False  # as the HF tokenizers here: BOS comes from the chat template, not the tokenizer


def convert_llama(hf_dir: Path, out: Path, dtype: str = "f16", name: str = "tiny-llama", *, split_tensors: int = 0,
                  vocab: Vocab | None = None) -> Path:  # fmt: skip
    """Write `out` (a .gguf file) from the Llama folder `hf_dir`; dtype is f32, f16 or q8_0.

    split_tensors > 0: a split model of that many tensors per file, named as llama.cpp's gguf-split names them
    (OUT-00001-of-0000N.gguf). vocab: instead of the folder's own tokenizer (which must then be a byte-level BPE)."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((hf_dir / "config.json").read_text())
    weights = load_file(str(hf_dir / "model.safetensors"))
    writer = gguf.GGUFWriter(str(out), "llama", split_max_tensors=split_tensors)
    _write_hparams(writer, config, name, FILE_TYPES[dtype])
    _write_vocab(writer, vocab or hf_vocab(hf_dir, config["vocab_size"]))
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    for key, data in _gguf_tensors(weights, config, heads, kv_heads):
        _add_tensor(writer, key, data, dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def hf_vocab(hf_dir: Path, size: int) -> Vocab:
    """The byte-level BPE tokenizer of a saved HF folder, padded to the model's `size` with unused tokens."""
    import gguf

    tokenizer = json.loads((hf_dir / "tokenizer.json").read_text())
    tok_config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    ids = dict(tokenizer["model"]["vocab"])
    special = {t["content"] for t in tokenizer.get("added_tokens", []) if t.get("special")}
    ids.update({t["content"]: t["id"] for t in tokenizer.get("added_tokens", [])})
    by_id = {i: t for t, i in ids.items()}
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(size)]  # a model may pad its vocabulary beyond the tokenizer's
    types = [gguf.TokenType.UNUSED if i not in by_id else gguf.TokenType.CONTROL if by_id[i] in special
             else gguf.TokenType.NORMAL for i in range(size)]  # fmt: skip
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"].get("merges", [])]
    named = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        text = tok_config.get(key)
        text = text.get("content") if isinstance(text, dict) else text
        if text in ids:
            named[key] = ids[text]
    template = tok_config.get("chat_template")
    if not template and (hf_dir / "chat_template.jinja").is_file():
        template = (hf_dir / "chat_template.jinja").read_text()
    return Vocab(tokens, types, merges, named, template, bool(tok_config.get("add_bos_token", False)))


def _write_hparams(writer, config: dict, name: str, file_type: int) -> None:
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    rope = config.get("rope_parameters") or {}
    writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config.get("num_key_value_heads") or config["num_attention_heads"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta") or config.get("rope_theta") or 10000.0))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(file_type)


def _write_vocab(writer, vocab: Vocab) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # the GPT-2 split regex: what tokenizers' ByteLevel pre-tokenizer uses
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    adders = {"bos_token": writer.add_bos_token_id, "eos_token": writer.add_eos_token_id,
              "unk_token": writer.add_unk_token_id, "pad_token": writer.add_pad_token_id}  # fmt: skip
    for key, token_id in vocab.special.items():
        adders[key](token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(False)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


def _gguf_tensors(weights: dict, config: dict, heads: int, kv_heads: int):
    yield "token_embd.weight", weights["model.embed_tokens.weight"]
    yield "output_norm.weight", weights["model.norm.weight"]
    if "lm_head.weight" in weights and not config.get("tie_word_embeddings"):
        yield "output.weight", weights["lm_head.weight"]
    for layer in range(config["num_hidden_layers"]):
        for hf_name, gguf_name in LAYER_TENSORS.items():
            data = weights[f"model.layers.{layer}.{hf_name}"]
            if hf_name.startswith("self_attn.q_proj"):
                data = _permute(data, heads)
            elif hf_name.startswith("self_attn.k_proj"):
                data = _permute(data, kv_heads)
            yield f"blk.{layer}.{gguf_name}", data


def _permute(weights, heads: int):
    """HF's rotate-half row order -> llama.cpp's interleaved pairs, per head (convert_hf_to_gguf's permute)."""
    rows = weights.shape[0]
    return weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _add_tensor(writer, key: str, data, dtype: str) -> None:
    import gguf
    import numpy as np

    data = np.ascontiguousarray(data.astype(np.float32))
    if data.ndim == 1 or dtype == "f32":  # norms stay f32, as llama.cpp's converter keeps them
        writer.add_tensor(key, data)
    elif dtype == "f16":
        writer.add_tensor(key, data.astype(np.float16))
    else:
        quantized = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(key, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
