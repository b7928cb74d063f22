"""Write the benchmark's Markdown table, JSON and PNG chart."""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

SERVERS = [("hearth", "Hearth (continuous batching)"), ("hearth-unbatched", "Hearth, batching off (one at a time)"),
           ("transformers-serve", "transformers serve --continuous-batching")]  # fmt: skip


def _single_stream_tps(level) -> float:
    """Per-request tokens/s of a one-client level (tokens over the whole request time)."""
    return sum(s.tokens for s in level.samples) / sum(s.total for s in level.samples)


def summary(results: dict) -> dict:
    """The headline ratios."""
    hearth = results["hearth"]
    out = {"generate_tps": results["generate_tps"]}
    if results.get("generate_tps_packed"):
        out["generate_tps_packed"] = results["generate_tps_packed"]
    if 1 in hearth:
        out["api_single_tps"] = _single_stream_tps(hearth[1])
        reference = out.get("generate_tps_packed") or results["generate_tps"]  # the same weights Hearth runs
        out["api_overhead_ratio"] = out["api_single_tps"] / reference
        out["api_vs_plain_generate"] = out["api_single_tps"] / results["generate_tps"]
    if 1 in hearth and 8 in hearth:
        out["scaling_8_vs_1"] = hearth[8].aggregate / hearth[1].aggregate
    if 8 in hearth and results.get("generate_tps_batch8"):
        out["generate_tps_batch8"] = results["generate_tps_batch8"]
        out["vs_static_batch8"] = hearth[8].aggregate / results["generate_tps_batch8"]
    peer = results.get("transformers-serve")
    if peer and 8 in peer and 8 in hearth:
        out["vs_transformers_serve_at_8"] = hearth[8].aggregate / peer[8].aggregate
        runs = results.get("repeats", {})
        pairs = zip(runs.get("hearth", {}).get(8, []), runs.get("transformers-serve", {}).get(8, []))
        out["vs_transformers_serve_at_8_each_run"] = [round(h / t, 2) for h, t in pairs if t]
    for key in ("second_turn", "second_turn_cold"):
        if key in results:
            out[key] = results[key]
    return out


def markdown(results: dict, head: dict) -> str:
    """The report as Markdown."""
    args = results["args"]
    lines = [
        f"# Serving benchmark ({results['started']})",
        "",
        f"Model: random Llama `{args['shape']}` ({args['dtype']}, {args['device']}), prompt {args['prompt_tokens']} "
        f"tokens, {args['max_new_tokens']} new tokens per request (pinned), {args['rounds']} requests per client, "
        f"{args['threads']} CPU threads per server; {platform.processor() or platform.machine()}. Each level ran "
        f"{args.get('repeats', 1)} times per server, the servers taking turns; each row is the median run.",
        f"Command: `python bench/serve.py {' '.join(_cli(args))}`",
        "",
        "| server | clients | aggregate tok/s | x single client | TTFT p50 s | TTFT p95 s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, label in SERVERS:
        levels = results.get(key)
        if not levels:
            continue
        base = levels[min(levels)].aggregate
        for clients, level in levels.items():
            lines.append(f"| {label} | {clients} | {level.aggregate:.0f} | {level.aggregate / base:.2f} | "
                         f"{level.ttft(0.5):.3f} | {level.ttft(0.95):.3f} |")  # fmt: skip
    lines += ["", "| headline | value |", "|---|---:|"]
    lines.append(f"| raw `generate()` batch 1, tok/s | {head['generate_tps']:.1f} |")
    packed = "generate_tps_packed" in head
    if packed:
        lines.append(f"| raw `generate()` batch 1 with linear weights packed as Hearth packs them, tok/s | "
                     f"{head['generate_tps_packed']:.1f} |")  # fmt: skip
    if "api_overhead_ratio" in head:
        reference = "packed generate" if packed else "generate"
        lines.append(f"| streaming API single client, tok/s | {head['api_single_tps']:.1f} |")
        lines.append(f"| API overhead ratio (API / {reference}, target >= 0.95) | {head['api_overhead_ratio']:.2f} |")
        if packed:
            lines.append(f"| streaming API single client / plain `generate()` | {head['api_vs_plain_generate']:.2f} |")
    if "scaling_8_vs_1" in head:
        lines.append(f"| 8 clients vs 1, aggregate (target >= 2.5) | {head['scaling_8_vs_1']:.2f} |")
    if "vs_static_batch8" in head:
        lines.append(f"| raw `generate()` batch 8 (no server), tok/s | {head['generate_tps_batch8']:.1f} |")
        lines.append(f"| Hearth at 8 clients / raw `generate()` batch 8 | {head['vs_static_batch8']:.2f} |")
    if "vs_transformers_serve_at_8" in head:
        lines.append(f"| vs transformers serve at 8 clients (target >= 1.5) | {head['vs_transformers_serve_at_8']:.2f} |")
        if len(head.get("vs_transformers_serve_at_8_each_run", [])) > 1:
            each = ", ".join(f"{r:.2f}" for r in head["vs_transformers_serve_at_8_each_run"])
            lines.append(f"| the same, run by run (turns taken side by side) | {each} |")
    for h, ttft in head.get("second_turn", {}).items():
        cold = head.get("second_turn_cold", {}).get(h)
        cold_text = f"{cold:.3f} s without" if cold is not None else "n/a"
        lines.append(f"| second-turn TTFT, {h}-token history | {ttft:.3f} s with prefix reuse, {cold_text} |")
    return "\n".join(lines) + "\n"


def _cli(args: dict) -> list[str]:
    defaults = {"shape": "60m", "device": "cpu", "dtype": "float32", "threads": 2, "max_new_tokens": 64,
                "prompt_tokens": 32, "concurrency": "1,2,4,8,16", "rounds": 2, "repeats": 3, "max_batch": 16,
                "history": "256,1024"}  # fmt: skip
    out = []
    for key, default in defaults.items():
        if args.get(key) != default:
            out += [f"--{key.replace('_', '-')}", str(args[key])]
    return out


def chart(results: dict, path: Path) -> None:
    """Aggregate tokens/s against clients, one line per server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, label in SERVERS:
        levels = results.get(key)
        if levels:
            ax.plot(list(levels), [lv.aggregate for lv in levels.values()], marker="o", label=label)
    ax.set_xlabel("concurrent streaming clients")
    ax.set_ylabel("aggregate tokens/s")
    ax.set_xscale("log", base=2)
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(f"random {results['args']['shape']} Llama, {results['args']['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: dict, out: Path) -> str:
    """Write serve-latest.md/.json/.png and a timestamped copy; return the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    head = summary(results)
    text = markdown(results, head)
    tag = "" if results["args"]["device"] == "cpu" else f"-{results['args']['device']}-{results['args']['shape']}"
    (out / f"serve{tag}-latest.md").write_text(text)
    (out / f"serve{tag}-{time.strftime('%Y%m%d-%H%M%S')}.md").write_text(text)
    raw = {k: ({c: {"wall": lv.wall, "samples": [vars(s) for s in lv.samples]} for c, lv in v.items()}
               if k in dict(SERVERS) else v) for k, v in results.items()}  # fmt: skip
    (out / f"serve{tag}-latest.json").write_text(json.dumps({"summary": head, "raw": raw}, indent=1, default=str))
    chart(results, out / f"serve{tag}-latest.png")
    return text
