#!/usr/bin/env python3
"""GGUF serving benchmark: Hearth's llama.cpp loader against llama-cpp-python's own server, same file, same run.

    pip install -r bench/requirements.txt     # includes llama-cpp-python[server] (CMAKE_ARGS: requirements-gguf.txt)
    python bench/gguf_serve.py                # a random ~60M Llama as an f16 GGUF; 1 and 8 streaming clients
    python bench/gguf_serve.py --quant q8_0 --concurrency 1,2,4,8,16

The random model of bench_model.py (its shape, its seed) is written as GGUF with a byte-level BPE vocabulary in
which each prompt word (" wabc") is one token, so a 32-word prompt is about 32 tokens, as in bench/serve.py. Both servers use --threads CPU threads and stream 64 tokens per request (Hearth: ignore_eos; llama_cpp.server:
EOS banned by logit_bias). Levels take turns between the servers (--repeats times); the median run of each is
reported. Writes bench/results/gguf-latest.{md,json} and a timestamped copy of the Markdown.
"""
from __future__ import annotations

import argparse
import json
import platform
import string
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent / "tests"))  # gguf_models: the HF -> GGUF writer the tests use

from bench_model import SHAPES, build  # noqa: E402
from load import run_level  # noqa: E402
from serve import HEARTH_EXTRA, warm_up  # noqa: E402
from servers import start_hearth, start_llama_cpp_server  # noqa: E402

LABELS = {"hearth": "Hearth, llama.cpp loader (continuous batching)",
          "llama-cpp-server": "llama-cpp-python's server (`python -m llama_cpp.server`)"}  # fmt: skip
SPECIALS = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]  # the ids bench_model.py gives them
EOS = 2


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="60m", choices=list(SHAPES), help="random model shape (default 60m)")
    p.add_argument("--quant", default="f16", choices=["f32", "f16", "q8_0"], help="GGUF weights type (default f16)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for each server (default 2)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens per request, pinned (default 64)")
    p.add_argument("--prompt-tokens", type=int, default=32, help="prompt words, one token each (default 32)")
    p.add_argument("--concurrency", default="1,8", help="client counts (default 1,8)")
    p.add_argument("--rounds", type=int, default=2, help="requests per client per level (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each level per server, taking turns (default 3)")
    p.add_argument("--max-batch", type=int, default=16, help="Hearth's --max-batch-size (default 16)")
    p.add_argument("--out", default=str(HERE / "results"), help="results folder (default bench/results)")
    return p.parse_args(argv)


def suffixes(count: int) -> list[str]:
    """The first `count` letter strings in breadth-first order (a ... z, aa ... zz, aaa ...): each one's prefix
    comes before it."""
    out, level = [], [""]
    while len(out) < count:
        level = [w + c for w in level for c in string.ascii_lowercase]
        out += level
    return out[:count]


def bench_vocab(size: int):
    """A byte-level BPE vocabulary of exactly `size` tokens: the specials, the 256 byte symbols, " w", then " wa",
    " wb", ... " waa", ..., each reached by merging its prefix with one more letter. GPT-2's pre-tokenizer keeps a
    space and letters together, so each word of prompt_words() is one token."""
    import gguf
    from gguf_models import Vocab
    from tokenizers import pre_tokenizers

    from bench_model import CHAT_TEMPLATE

    space = "\u0120"  # the byte-level symbol of " "
    words = [space + "w" + s for s in suffixes(size - len(SPECIALS) - 257)]
    tokens = SPECIALS + sorted(pre_tokenizers.ByteLevel.alphabet()) + [space + "w"] + words
    merges = [f"{space} w"] + [f"{w[:-1]} {w[-1]}" for w in words]  # " wab" = " wa" + "b"
    types = [gguf.TokenType.CONTROL] * len(SPECIALS) + [gguf.TokenType.NORMAL] * (size - len(SPECIALS))
    special = {"unk_token": 0, "bos_token": 1, "eos_token": EOS}
    return Vocab(tokens, types, merges, special, CHAT_TEMPLATE)


def prompt_words(n: int, offset: int = 0) -> str:
    """A prompt of `n` words of the bench vocabulary (one token each after the first), as bench_model.prompt_text."""
    words = suffixes(30_000 + 10)
    return " ".join("w" + words[10 + (offset + i) % 30_000] for i in range(n))


def gguf_body(args, extra: dict, model: str):
    """A body factory: request i gets a distinct prompt of --prompt-tokens words."""

    def make(i: int) -> dict:
        messages = [{"role": "user", "content": prompt_words(args.prompt_tokens, offset=i * 97)}]
        return {"model": model, "messages": messages, "max_tokens": args.max_new_tokens, "temperature": 0,
                "stream": True, **extra}  # fmt: skip

    return make


def build_gguf(shape: str, quant: str) -> Path:
    """bench_model.py's random model of `shape` as a GGUF file (built once, kept in bench/.cache)."""
    from gguf_models import convert_llama

    out = HERE / ".cache" / f"gguf-{shape}" / f"random-{shape}-{quant}.gguf"
    if out.is_file():
        return out
    hf = build(HERE / ".cache" / f"random-{shape}-float32", shape, "float32")
    out.parent.mkdir(parents=True, exist_ok=True)
    vocab_size = SHAPES[shape][5]
    return convert_llama(hf, out, quant, name=f"random-{shape}", vocab=bench_vocab(vocab_size))


def start(model: Path, args, processes: list) -> dict:
    """Both servers up at once; {name: (base URL, body factory)}."""
    hearth, url = start_hearth(model.parent, model.name, max_batch=args.max_batch, threads=args.threads)
    processes.append(hearth)
    servers = {"hearth": (url, gguf_body(args, HEARTH_EXTRA, model.name))}
    peer, peer_url = start_llama_cpp_server(model, args.threads)
    processes.append(peer)
    servers["llama-cpp-server"] = (peer_url, gguf_body(args, {"logit_bias": {str(EOS): -100.0}}, model.name))
    return servers


def check_pinned(url: str, make_body, tokens: int) -> None:
    """llama_cpp.server reports no usage when streaming, and sends an empty chunk for a token that is not yet text:
    check once (not streaming) that a request makes exactly `tokens` tokens, so its streams can be counted so."""
    import requests

    answer = requests.post(url + "/chat/completions", json={**make_body(0), "stream": False}, timeout=600).json()
    made, reason = answer["usage"]["completion_tokens"], answer["choices"][0]["finish_reason"]
    if made != tokens or reason != "length":
        raise RuntimeError(f"llama_cpp.server made {made} tokens ({reason}), not {tokens}: the count would be wrong")


def run_turns(servers: dict, args, levels: list[int]) -> tuple[dict, dict]:
    """Each level --repeats times per server, servers taking turns (rotating order); the peer's requests count as
    --max-new-tokens each (see check_pinned). ({server: {clients: median run}}, {server: {clients: [tok/s]}})."""
    medians: dict = {name: {} for name in servers}
    repeats: dict = {name: {} for name in servers}
    names = list(servers)
    for clients in levels:
        runs: dict = {name: [] for name in names}
        for rep in range(args.repeats):
            for name in names[rep % len(names):] + names[: rep % len(names)]:
                url, make_body = servers[name]
                level = run_level(url + "/chat/completions", make_body, clients, args.rounds)
                if name == "llama-cpp-server":
                    for sample in level.samples:
                        sample.tokens = args.max_new_tokens
                runs[name].append(level)
        for name in names:
            ordered = sorted(runs[name], key=lambda r: r.aggregate)
            medians[name][clients] = ordered[len(ordered) // 2]
            repeats[name][clients] = [round(r.aggregate, 1) for r in runs[name]]
        print(f"{clients} clients: " + ", ".join(f"{n} {medians[n][clients].aggregate:.0f}" for n in names), flush=True)
    return medians, repeats


def report(results: dict, out: Path) -> str:
    """Markdown table of the median runs plus the 8-client ratio; writes gguf-latest.{md,json}."""
    levels = sorted(results["hearth"])
    lines = [f"# GGUF serving benchmark ({results['started']})", "",
             f"Model: random {results['args']['shape']} Llama as a {results['args']['quant']} GGUF "
             f"({results['model_mb']:.0f} MB), {results['args']['threads']} threads per server, "
             f"{results['args']['prompt_tokens']}-word prompts, {results['args']['max_new_tokens']} new tokens per "
             f"request, {results['args']['rounds']} requests per client, median of {results['args']['repeats']} "
             f"runs. Machine: {platform.processor() or platform.machine()}, {results['cpus']} CPUs.", "",
             "| server | clients | aggregate tok/s | x single client | TTFT p50 s | TTFT p95 s | runs (tok/s) |",
             "|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for name in ("hearth", "llama-cpp-server"):
        base = results[name][levels[0]].aggregate
        for clients in levels:
            lv = results[name][clients]
            runs = ", ".join(f"{r:.0f}" for r in results["repeats"][name][clients])
            lines.append(f"| {LABELS[name]} | {clients} | {lv.aggregate:.0f} | {lv.aggregate / base:.2f} | "
                         f"{lv.ttft(0.5):.3f} | {lv.ttft(0.95):.3f} | {runs} |")  # fmt: skip
    ratios = {c: results["hearth"][c].aggregate / results["llama-cpp-server"][c].aggregate for c in levels}
    lines += ["", "| Hearth / llama_cpp.server, aggregate | " + " | ".join(f"{c} clients" for c in levels) + " |",
              "|---|" + "---:|" * len(levels),
              "| median runs | " + " | ".join(f"{ratios[c]:.2f}" for c in levels) + " |"]  # fmt: skip
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "gguf-latest.md").write_text(text)
    (out / f"gguf-{time.strftime('%Y%m%d-%H%M%S')}.md").write_text(text)
    data = {k: v for k, v in results.items() if k not in ("hearth", "llama-cpp-server")}
    data["levels"] = {name: {c: _level_json(lv) for c, lv in results[name].items()} for name in LABELS}
    data["ratio"] = ratios
    (out / "gguf-latest.json").write_text(json.dumps(data, indent=2, default=str))
    return text


def _level_json(level) -> dict:
    return {"aggregate": level.aggregate, "tokens": level.tokens, "wall": level.wall, "ttft_p50": level.ttft(0.5),
            "ttft_p95": level.ttft(0.95)}  # fmt: skip


def main(argv=None) -> int:
    """Build the GGUF, start both servers, run the levels, write the report."""
    import os

    args = parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    model = build_gguf(args.shape, args.quant)
    results = {"args": vars(args), "model": str(model), "model_mb": model.stat().st_size / 2**20,
               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count()}  # fmt: skip
    print(f"model: {model}", flush=True)
    processes: list = []
    try:
        servers = start(model, args, processes)
        for url, make_body in servers.values():
            warm_up(url, make_body)
        check_pinned(*servers["llama-cpp-server"], args.max_new_tokens)
        medians, results["repeats"] = run_turns(servers, args, levels)
        results.update(medians)
    finally:
        for process in processes:
            process.stop()
    print(report(results, Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
