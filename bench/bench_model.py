"""A random-initialised Llama of realistic shape, with a 32k-token word-level tokenizer, for speed measurements.

Speed does not depend on the weights when the generation length is pinned (ignore_eos / min_new_tokens).
"""
from __future__ import annotations

from pathlib import Path

SHAPES = {
    # name: (hidden, intermediate, layers, heads, kv_heads, vocab, max_positions)
    "60m": (512, 1376, 8, 8, 8, 32000, 4096),
    "1b": (2048, 5632, 22, 32, 4, 32000, 4096),
    "tiny": (64, 128, 2, 4, 2, 1000, 1024),  # for the test suite's smoke run, not for figures
}
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '</s>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def build_tokenizer(vocab: int):
    """A word-level tokenizer whose vocabulary is `vocab` synthetic words (w0 ... wN), so every id decodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
    words = {tok: i for i, tok in enumerate(specials)}
    words.update({f"w{i}": i for i in range(len(specials), vocab)})
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": specials[3:]})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build(path: Path, shape: str = "60m", dtype: str = "float32", device: str = "cpu") -> Path:
    """Save a random Llama of `shape` into `path` (skipped if it is already there)."""
    if (path / "config.json").is_file():
        return path
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    hidden, inter, layers, heads, kv_heads, vocab, positions = SHAPES[shape]
    tokenizer = build_tokenizer(vocab)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=positions,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def prompt_text(n_tokens: int, offset: int = 0) -> str:
    """A prompt of exactly `n_tokens` words of the bench tokenizer."""
    return " ".join(f"w{10 + (offset + i) % 30000}" for i in range(n_tokens))
