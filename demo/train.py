"""Train hearth-demo, Hearth's built-in tiny chat model, deterministically on CPU from a synthetic instruction set."""
from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run as a script: make the `demo` package importable
from demo import dataset, formats  # noqa: E402
from demo.evaluate import evaluate_model  # noqa: E402

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def tokenizer_corpus(n: int = 20000) -> list[str]:
    """Plain texts the BPE merges are learned from: the training examples' texts, the probes and the words."""
    rng, texts = random.Random(dataset.SEED + 1), []
    for _ in range(n):
        texts += [text for text, _ in dataset.example(rng, set())[1]]
    return texts + [q for q, _ in dataset.probes()] + dataset.WORDS


def build_tokenizer(vocab_size: int):
    """A byte-level BPE with single-digit tokens, wrapped as a PreTrainedTokenizerFast with ChatML."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>", unk_token="<unk>", pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"], clean_up_tokenization_spaces=False,
        model_max_length=512,
    )
    fast.chat_template = CHAT_TEMPLATE
    check_tokenizer(fast)
    return fast


def check_tokenizer(tok) -> None:
    """Fail fast if the tokenizer adds tokens, splits digits wrongly, loses text or disagrees with render()."""
    assert tok("x")["input_ids"] == tok("x", add_special_tokens=False)["input_ids"], "tokenizer adds specials"
    assert len(tok.encode("1234", add_special_tokens=False)) == 4, "digits must be single tokens"
    rng = random.Random(0)
    for text in tokenizer_corpus(300) + ["héllo 東京 🙂 {x}\n\tend"]:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text, f"round-trip failed: {text!r}"
    for _ in range(300):  # encoding the pieces one by one gives the tokens of the whole text (what Hearth sends)
        pieces = dataset.example(rng, set())[1]
        whole = tok.encode("".join(text for text, _ in pieces), add_special_tokens=False)
        assert encode_example(tok, pieces)[0] == whole, f"piece boundaries change the tokens: {pieces!r}"
    messages = dataset.instruct_messages(rng, set())
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == formats.chatml(messages, True), "chat template and formats.chatml disagree"


def encode_example(tok, pieces: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """Token ids and labels of one example; the labels keep only the trained pieces (answers and <|im_end|>)."""
    merged: list[tuple[str, bool]] = []  # adjacent pieces of one kind are encoded together, as in the whole text
    for text, trained in pieces:
        if merged and merged[-1][1] == trained:
            merged[-1] = (merged[-1][0] + text, trained)
        else:
            merged.append((text, trained))
    ids, labels = [], []
    for text, trained in merged:
        piece = tok.encode(text, add_special_tokens=False)
        ids += piece
        labels += piece if trained else [-100] * len(piece)
    return ids, labels


def batches(tok, rng: random.Random, banned: set, batch_size: int, mixed: bool, pool: int = 16):
    """Endless (input_ids, attention_mask, labels) batches, bucketed by length to cut padding."""
    pad = tok.pad_token_id
    while True:
        rows = [encode_example(tok, dataset.example(rng, banned, mixed)[1]) for _ in range(batch_size * pool)]
        rows.sort(key=lambda r: len(r[0]))
        chunks = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
        rng.shuffle(chunks)
        for chunk in chunks:
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.tensor([r[0] + [pad] * (width - len(r[0])) for r in chunk])
            labels = torch.tensor([r[1] + [-100] * (width - len(r[1])) for r in chunk])
            yield ids, (ids != pad).long(), labels


def build_model(tok, args):
    """A small LlamaForCausalLM sized by the command-line arguments."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
        max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=im_end, pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=[im_end, tok.convert_tokens_to_ids("</s>")],
        pad_token_id=tok.pad_token_id, do_sample=False, max_new_tokens=64,
    )
    return model


def lr_at(step: int, args) -> float:
    """Linear warmup, then cosine decay to 10% of the peak learning rate."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model, tok, args) -> None:
    """The training loop: AdamW, warmup + cosine, gradient clipping, periodic held-out accuracy."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98), eps=1e-8)
    banned = set(dataset.held_out_triples())
    # Two phases over one schedule: one-question chats teach the tasks cheaply, then the mixed layouts teach
    # the model to find the last question in longer chats and in the chat modes (longer, so smaller batches).
    rng, start, seen = random.Random(dataset.SEED), time.time(), 0.0
    first = batches(tok, rng, banned, args.batch_size, mixed=False)
    mixed = batches(tok, rng, banned, args.mixed_batch_size, mixed=True)
    model.train()
    for step in range(args.steps):
        ids, mask, labels = next(first if step < args.first_steps else mixed)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        seen += loss.item()
        if (step + 1) % args.log_every == 0:
            print(f"step {step + 1}/{args.steps}  loss {seen / args.log_every:.4f}  "
                  f"lr {lr_at(step, args):.2e}  {time.time() - start:.0f}s", flush=True)
            seen = 0.0
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            report = evaluate_model(model.eval(), tok, probes=False, scenarios=False)
            print(f"step {step + 1}: held-out accuracy {report['accuracy']:.1%}", flush=True)
            model.train()
    print(f"trained {args.steps} steps in {time.time() - start:.0f}s", flush=True)


def save(model, tok, out: Path, args) -> None:
    """Write the Hugging Face folder: weights, config, tokenizer, chat template, generation config, card."""
    out.mkdir(parents=True, exist_ok=True)
    model.to(getattr(torch, args.save_dtype)).save_pretrained(out)
    tok.save_pretrained(out)
    card = (HERE / "MODEL_CARD.md").read_text()
    params = sum(p.numel() for p in model.parameters())
    (out / "README.md").write_text(card.replace("{params}", f"{params / 1e6:.2f}M"))


def parse_args(argv=None):
    """Command-line options; the defaults reproduce the committed demo/hearth-demo."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=HERE / "hearth-demo", help="output folder")
    p.add_argument("--steps", type=int, default=4200, help="optimizer steps in all")
    p.add_argument("--first-steps", type=int, default=2400, help="steps of one-question instruct chats first")
    p.add_argument("--batch-size", type=int, default=64, help="batch size of the first steps")
    p.add_argument("--mixed-batch-size", type=int, default=32, help="batch size of the mixed steps after them")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--intermediate", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--save-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--seed", type=int, default=0, help="torch seed for the initial weights")
    p.add_argument("--threads", type=int, default=2, help="torch threads (fixed for reproducibility)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=1000, help="held-out accuracy every N steps (0: never)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Build the tokenizer, train, save, reload from disk in fp32 and report held-out accuracy."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    tok = build_tokenizer(args.vocab_size)
    model = build_model(tok, args)
    params = sum(p.numel() for p in model.parameters())
    print(f"vocab {len(tok)}  parameters {params / 1e6:.2f}M", flush=True)
    train(model, tok, args)
    save(model, tok, args.out, args)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reloaded = AutoModelForCausalLM.from_pretrained(args.out, dtype=torch.float32).eval()
    report = evaluate_model(reloaded, AutoTokenizer.from_pretrained(args.out), probes=True)
    print(f"saved {args.out}; final held-out accuracy {report['accuracy']:.1%} "
          f"({report['correct']}/{report['total']}), identity {'ok' if report['identity'] else 'WRONG'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
