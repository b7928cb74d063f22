#!/usr/bin/env python3
"""Serving benchmark: Hearth's streaming API against raw generate(), Hearth without batching, and
`transformers serve --continuous-batching`, measured side by side in one run on the same model.

    pip install -r bench/requirements.txt     # its tools and the transformers serve peer (once)
    python bench/serve.py                     # builds a random ~60M Llama (CPU, fp32), runs everything (README)
    python bench/serve.py --dtype bfloat16    # the same in bf16 (fast only on CPUs with AMX or AVX-512 BF16)
    python bench/serve.py --shape 1b --device cuda --dtype bfloat16 --concurrency 1,8,32
    python bench/serve.py --busy 1 --busy-only  # idle against one competing CPU-bound process, 1 and 8 clients

Every server is started at once and their runs of each level take turns (--repeats times), so a change in this
shared machine's load hits them alike; the report shows the median run of each. Writes
bench/results/serve-latest.{md,json,png} (and a timestamped copy of the Markdown); with --busy,
bench/results/busy-latest.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # Hearth's modules, for the packed-weights reference

from bench_model import build, prompt_text  # noqa: E402
from busy import LABELS as BUSY_SERVERS  # noqa: E402
from busy import run_idle_and_busy, write_busy_report  # noqa: E402
from load import run_level, stream_once  # noqa: E402
from report import write_report  # noqa: E402
from servers import start_hearth, start_transformers_serve  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a Hugging Face model folder (default: build a random model of --shape)")
    p.add_argument("--shape", default="60m", choices=["60m", "1b", "tiny"], help="random model shape (default 60m)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", help="weights dtype for the random model and the servers")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for every server (default 2)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens per request, pinned (default 64)")
    p.add_argument("--prompt-tokens", type=int, default=32, help="prompt length (default 32)")
    p.add_argument("--concurrency", default="1,2,4,8,16", help="client counts (default 1,2,4,8,16)")
    p.add_argument("--rounds", type=int, default=2, help="requests per client per level (default 2)")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of each level per server, servers interleaved; the median run is reported (default 3)")
    p.add_argument("--max-batch", type=int, default=16, help="Hearth's --max-batch-size (default 16)")
    p.add_argument("--history", default="256,1024", help="chat history lengths for the second-turn test")
    p.add_argument("--skip-transformers-serve", action="store_true", help="do not run the transformers peer")
    p.add_argument("--skip-unbatched", action="store_true", help="do not run Hearth with batching off")
    p.add_argument("--busy", type=int, default=0,
                   help="also measure Hearth and transformers serve idle and beside this many competing CPU-bound "
                        "processes, started and stopped by the bench (default 0: not measured)")
    p.add_argument("--busy-concurrency", default="1,8", help="client counts for the busy comparison (default 1,8)")
    p.add_argument("--busy-only", action="store_true", help="only the idle/busy comparison (needs --busy)")
    p.add_argument("--out", default=str(HERE / "results"), help="results folder (default bench/results)")
    return p.parse_args(argv)


def chat_body(args, extra: dict, model: str):
    """A body factory: request i gets a distinct prompt of --prompt-tokens words."""

    def make(i: int) -> dict:
        messages = [{"role": "user", "content": prompt_text(args.prompt_tokens, offset=i * 97)}]
        return {"model": model, "messages": messages, "max_tokens": args.max_new_tokens, "temperature": 0,
                "stream": True, **extra}  # fmt: skip

    return make


HEARTH_EXTRA = {"ignore_eos": True, "stream_options": {"include_usage": True}}


def hf_extra(args) -> dict:
    config = {"max_new_tokens": args.max_new_tokens, "min_new_tokens": args.max_new_tokens, "do_sample": False}
    return {"generation_config": json.dumps(config)}


def measure_generate(model_path: Path, args, batch: int = 1, packed: bool = False) -> float | None:
    """Tokens/s of the model's own generate() at `batch` equal prompts, prompt and length as the API runs.

    The median of 5 timed runs after a warm-up one, as the servers' rows are their median runs (a best-of would
    favour this side of every ratio).

    Batch 1 is the API-overhead reference; batch 8 (static batching, no server) shows what the model's own
    generate() reaches with 8 prompts. `packed`: with the linear weights packed as Hearth packs them (on CPU, where
    this CPU's oneDNN runs the dtype), so the overhead ratio compares like with like; None when the model is not
    packable."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modules.loaders.cpu_packing import pack_linears

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(args.device).eval()
    if packed and not pack_linears(model):
        return None
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    messages = [{"role": "user", "content": prompt_text(args.prompt_tokens)}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)] * batch, device=args.device)
    n = args.max_new_tokens
    rates = []
    with torch.inference_mode():
        for run in range(6):  # the first run warms up
            start = time.perf_counter()
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if run:
                rates.append(batch * (out.shape[1] - ids.shape[1]) / (time.perf_counter() - start))
    del model
    return sorted(rates)[len(rates) // 2]


def start_servers(model_path: Path, args, processes: list) -> dict:
    """Every server under test, all up at once (an idle one sleeps) so their levels can take turns.

    Returns {name: (base URL, body factory)}; each started process is appended to `processes` (for stopping)."""
    servers = {}
    hearth_body = chat_body(args, HEARTH_EXTRA, model_path.name)
    variants = [("hearth", args.max_batch, True), ("hearth-unbatched", 1, True)]
    if args.busy:
        variants.append(("hearth-fixed-threads", args.max_batch, False))  # before adapt_threads, for comparison
    for name, max_batch, adapt in variants:
        if name == "hearth-unbatched" and args.skip_unbatched:
            continue
        process, url = start_hearth(model_path.parent, model_path.name, max_batch=max_batch, threads=args.threads,
                                    prefix_cache_mb=1024, dtype=args.dtype, adapt_threads=adapt)  # fmt: skip
        processes.append(process)
        servers[name] = (url, hearth_body)
    if not args.skip_transformers_serve:
        process, url = start_transformers_serve(model_path, args.threads, args.device)
        processes.append(process)
        servers["transformers-serve"] = (url, chat_body(args, hf_extra(args), str(model_path)))
    return servers


def warm_up(url: str, make_body) -> None:
    """Two requests, so first-call costs (allocations, kernel selection) are not measured."""
    for i in range(2):
        stream_once(url + "/chat/completions", make_body(10_000 + i))


def run_interleaved(servers: dict, args, levels: list[int]) -> tuple[dict, dict]:
    """Every level `--repeats` times per server, servers taking turns (in rotating order), so that a change in the
    machine's load hits all of them alike. Returns ({server: {clients: median run}}, {server: {clients: [tok/s]}})."""
    medians: dict = {name: {} for name in servers}
    repeats: dict = {name: {} for name in servers}
    names = list(servers)
    for clients in levels:
        runs: dict = {name: [] for name in names}
        for rep in range(args.repeats):
            for name in names[rep % len(names):] + names[: rep % len(names)]:
                url, make_body = servers[name]
                runs[name].append(run_level(url + "/chat/completions", make_body, clients, args.rounds))
        for name in names:
            ordered = sorted(runs[name], key=lambda r: r.aggregate)
            medians[name][clients] = ordered[len(ordered) // 2]
            repeats[name][clients] = [round(r.aggregate, 1) for r in runs[name]]  # in run order
        print(f"{clients} clients: " + ", ".join(f"{n} {medians[n][clients].aggregate:.0f}" for n in names), flush=True)
    return medians, repeats


def second_turn_ttft(url: str, history_tokens: int) -> float:
    """Time to first token of a chat's second turn, after a first turn with `history_tokens` of history."""
    system = {"role": "system", "content": prompt_text(history_tokens, offset=7)}
    first = [system, {"role": "user", "content": "w11 w12 w13"}]
    body = {"max_tokens": 16, "temperature": 0, "stream": True, "ignore_eos": True}
    reply = ""
    import requests

    with requests.post(url + "/chat/completions", json={**body, "messages": first, "stream": False}, timeout=600) as r:
        reply = r.json()["choices"][0]["message"]["content"]
    second = first + [{"role": "assistant", "content": reply}, {"role": "user", "content": "w21 w22 w23"}]
    return stream_once(url + "/chat/completions", {**body, "messages": second}).ttft


def measure_busy(servers: dict, args) -> None:
    """Hearth and transformers serve, idle and beside --busy competing processes; writes busy-latest.*."""
    servers = {name: servers[name] for name in BUSY_SERVERS if name in servers}
    levels = [int(c) for c in args.busy_concurrency.split(",")]
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    runs = run_idle_and_busy(servers, levels, args.busy, args.repeats, args.rounds, run_level)
    print(write_busy_report(runs, vars(args), started, Path(args.out)))


def busy_only(model_path: Path, args) -> int:
    """The idle/busy comparison alone."""
    args.skip_unbatched = True
    processes: list = []
    try:
        servers = start_servers(model_path, args, processes)
        for url, make_body in servers.values():
            warm_up(url, make_body)
        measure_busy(servers, args)
    finally:
        for process in processes:
            process.stop()
    return 0


def main(argv=None) -> int:
    """Run every measurement and write the report."""
    args = parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    histories = [int(h) for h in args.history.split(",")]
    if args.model:
        model_path = Path(args.model).resolve()
    else:
        model_path = build(HERE / ".cache" / f"random-{args.shape}-{args.dtype}", args.shape, args.dtype, args.device)
    if args.busy_only:
        if args.busy < 1:
            sys.exit("serve.py: error: --busy-only needs --busy N (N >= 1)")
        return busy_only(model_path, args)
    results: dict = {"args": vars(args), "model": str(model_path), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(f"model: {model_path}", flush=True)
    results["generate_tps"] = measure_generate(model_path, args)
    results["generate_tps_batch8"] = measure_generate(model_path, args, batch=8)
    results["generate_tps_packed"] = measure_generate(model_path, args, packed=True)
    packed = f"{results['generate_tps_packed']:.1f} tok/s" if results["generate_tps_packed"] else "n/a"
    print(f"raw generate(): {results['generate_tps']:.1f} tok/s, batch 8: {results['generate_tps_batch8']:.1f} tok/s, "
          f"packed weights: {packed}", flush=True)  # fmt: skip
    hearth_body = chat_body(args, HEARTH_EXTRA, model_path.name)
    processes: list = []
    try:
        servers = start_servers(model_path, args, processes)
        for url, make_body in servers.values():
            warm_up(url, make_body)
        main_servers = {name: value for name, value in servers.items() if name != "hearth-fixed-threads"}
        medians, results["repeats"] = run_interleaved(main_servers, args, levels)
        results.update(medians)
        results["second_turn"] = {h: second_turn_ttft(servers["hearth"][0], h) for h in histories}
        if args.busy:
            measure_busy(servers, args)
    finally:
        for process in processes:
            process.stop()
    process, url = start_hearth(model_path.parent, model_path.name, max_batch=args.max_batch, threads=args.threads,
                                prefix_cache_mb=0, dtype=args.dtype)  # fmt: skip
    try:
        stream_once(url + "/chat/completions", hearth_body(0))
        results["second_turn_cold"] = {h: second_turn_ttft(url, h) for h in histories}
    finally:
        process.stop()
    print(write_report(results, Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
