"""What a grammar mask costs per decode step, next to the model's step, at batch 1 and 8.

The model is bench_model's random 60M Llama (hidden 512, 8 layers) with a 32k byte-level BPE vocabulary trained here
on Python sources (a word-level vocabulary cannot spell JSON, and the mask's cost grows with the vocabulary). Every
sequence follows a JSON schema (an object of 40 required short strings, so it never ends early); the same steps are
run unconstrained for the model's own step time. The mask's part (filling each row's bitmask, applying it, and
advancing the matchers) is timed inside the step.

    python bench/mask_cost.py [--steps 64] [--out bench/results/mask-cost-latest.md]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CACHE = ROOT / "bench" / ".cache" / "mask-cost-60m-bpe32k"
# 40 required string fields: a realistic record that cannot be complete within the steps measured.
SCHEMA = {"type": "object", "properties": {f"field_{i}": {"type": "string", "minLength": 2, "maxLength": 12}
                                           for i in range(40)},
          "required": [f"field_{i}" for i in range(40)], "additionalProperties": False}  # fmt: skip


def build_model(path: Path) -> Path:
    """The 60M random Llama with a 32k BPE tokenizer (cached)."""
    if (path / "config.json").is_file():
        return path
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from bench_model import SHAPES  # bench/ is on sys.path when this script runs

    tokenizer = _train_tokenizer(32000)
    hidden, inter, layers, heads, kv_heads, _, positions = SHAPES["60m"]
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=inter,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=positions, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _train_tokenizer(vocab: int):
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    sources = sorted(Path(torch.__file__).parent.rglob("*.py"))[:3000]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator((p.read_text(errors="replace") for p in sources), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


class Timer:
    """Wraps a function and adds up the seconds spent in it."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def run(loader, batch: int, steps: int, constrained: bool) -> tuple[list[float], list[float]]:
    """(seconds per decode step, seconds of mask work per step) over `steps` steps of `batch` sequences."""
    import modules.loaders.batch_sampling as bs
    from modules.constraints.grammar import Grammar
    from modules.generation import SamplingParams
    from modules.loaders.base import SequenceSpec

    grammar = loader.compile_grammar(Grammar.json_schema(SCHEMA)) if constrained else None
    prompt = tuple(loader.encode("def main():\n    return [1, 2, 3]\n" * 4))
    for i in range(batch):
        matcher = grammar.new_matcher() if grammar else None
        loader.start(SequenceSpec(i, prompt, SamplingParams(temperature=1.0), seed=i, matcher=matcher))
    while loader.engine.prefilling:  # prefill all, untimed
        loader.step()
    masks, advance = Timer(bs.apply_masks), Timer(bs.advance)
    bs.apply_masks, bs.advance = masks, advance
    step_times, mask_times = [], []
    try:
        for _ in range(steps):
            before = masks.seconds + advance.seconds
            start = time.perf_counter()
            events = loader.step()
            step_times.append(time.perf_counter() - start)
            mask_times.append(masks.seconds + advance.seconds - before)
            assert len(events) == batch and not any(e.error or e.complete for e in events), events
    finally:
        bs.apply_masks, bs.advance = masks.fn, advance.fn
        for i in range(batch):
            loader.release(i)
    return step_times, mask_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mask-cost-latest.md")
    args = parser.parse_args()
    from modules.loaders.transformers_loader import TransformersLoader

    path = build_model(CACHE)
    loader = TransformersLoader.load(path, "mask-bench", {"max_batch_size": 8, "threads": args.threads,
                                                          "adapt_threads": False})  # fmt: skip
    loader.prepare()
    ms = lambda xs: 1000 * statistics.median(xs)  # noqa: E731
    rows = []
    for batch in (1, 8):
        run(loader, batch, 8, True)  # warm-up
        plain, _ = run(loader, batch, args.steps, False)
        steps, masks = run(loader, batch, args.steps, True)
        rows.append((batch, ms(plain), ms(steps), ms(masks), 1000 * max(masks)))
    lines = [
        "# Grammar mask cost per decode step",
        "",
        f"`python bench/mask_cost.py --steps {args.steps}`: random 60M Llama (fp32, {args.threads} threads, CPU), "
        f"vocabulary {loader.info.vocab_size}, a JSON schema of 40 required strings (2-12 characters), sampled at "
        f"temperature 1; medians of {args.steps} steps. Load average at the end: "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} (the model's step times swing with other programs; the "
        "mask's share is the figure to read).",
        "",
        "| batch | step, unconstrained ms | step, constrained ms | mask work ms (fill + apply + advance) | "
        "mask share of step | mask max ms |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for batch, plain, step, mask, worst in rows:
        lines.append(f"| {batch} | {plain:.2f} | {step:.2f} | {mask:.3f} | {100 * mask / step:.1f}% | {worst:.2f} |")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
