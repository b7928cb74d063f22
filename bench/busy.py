"""Busy-machine mode of the serving benchmark: the same servers measured idle and while other processes hold cores.

A competing process is `python -c "while True: pass"`: one core's worth of CPU-bound work, as a build, a browser tab
or another model server would take. The bench starts and stops them itself; idle and busy runs take turns per
repeat, the servers in rotating order within each, so a drift in this shared machine's load hits every cell alike.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

BUSY_CODE = "while True: pass"
PHASES = ("idle", "busy")
LABELS = {"hearth": "Hearth", "hearth-fixed-threads": "Hearth, adapt_threads off (before the fix)",
          "transformers-serve": "transformers serve --continuous-batching"}  # fmt: skip


class CompetingLoad:
    """`count` CPU-bound processes beside the servers while the `with` block runs."""

    def __init__(self, count: int):
        self.count = count
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> "CompetingLoad":
        self.processes = [subprocess.Popen([sys.executable, "-c", BUSY_CODE]) for _ in range(self.count)]
        time.sleep(0.5)  # let the scheduler see them before anything is timed
        return self

    def __exit__(self, *exc) -> None:
        for process in self.processes:
            process.kill()
            process.wait()


def run_idle_and_busy(servers: dict, levels: list[int], busy: int, repeats: int, rounds: int, run_level) -> dict:
    """{phase: {server: {clients: [LevelResult per repeat]}}} for phase idle and busy (`busy` competing processes)."""
    runs: dict = {phase: {name: {c: [] for c in levels} for name in servers} for phase in PHASES}
    names = list(servers)
    for clients in levels:
        for rep in range(repeats):
            for phase in PHASES if rep % 2 == 0 else PHASES[::-1]:
                with CompetingLoad(busy if phase == "busy" else 0):
                    for name in names[rep % len(names):] + names[: rep % len(names)]:
                        url, make_body = servers[name]
                        runs[phase][name][clients].append(run_level(url + "/chat/completions", make_body, clients,
                                                                    rounds))  # fmt: skip
        line = ", ".join(f"{n} {p} {_median(runs[p][n][clients]).aggregate:.0f}" for n in names for p in PHASES)
        print(f"{clients} clients: {line}", flush=True)
    return runs


def _median(levels: list):
    ordered = sorted(levels, key=lambda lv: lv.aggregate)
    return ordered[len(ordered) // 2]


def summary(runs: dict) -> dict:
    """Median aggregate tok/s per phase, server and level, and the headline ratios."""
    medians = {p: {n: {c: _median(lv).aggregate for c, lv in levels.items()} for n, levels in servers.items()}
               for p, servers in runs.items()}  # fmt: skip
    out: dict = {"median_tps": medians, "ratios": {}}
    hearth, peer = medians["busy"].get("hearth", {}), medians["busy"].get("transformers-serve", {})
    for clients, tps in hearth.items():
        row = {"busy_vs_own_idle": tps / medians["idle"]["hearth"][clients]}
        if clients in peer and peer[clients]:
            row["busy_vs_transformers_serve"] = tps / peer[clients]
            row["idle_vs_transformers_serve"] = medians["idle"]["hearth"][clients] / medians["idle"][
                "transformers-serve"][clients]  # fmt: skip
        out["ratios"][clients] = row
    return out


def markdown(runs: dict, head: dict, args: dict, started: str) -> str:
    """The idle/busy table and the ratios as Markdown."""
    lines = [
        f"# Busy-machine benchmark ({started})",
        "",
        f"Model: random Llama `{args['shape']}` ({args['dtype']}, {args['device']}), prompt {args['prompt_tokens']} "
        f"tokens, {args['max_new_tokens']} new tokens per request, {args['rounds']} requests per client, "
        f"{args['threads']} CPU threads per server; busy = {args['busy']} competing `python -c \"{BUSY_CODE}\"` "
        f"process(es). Idle and busy runs took turns, {args['repeats']} of each per server; rows are median runs "
        f"(aggregate tok/s; each run's figure in brackets).",
        "",
        "| server | clients | idle tok/s | busy tok/s | busy / idle |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, label in LABELS.items():
        for clients in runs["idle"].get(name, {}):
            idle, busy = (head["median_tps"][p][name][clients] for p in PHASES)
            each = " ".join(f"{lv.aggregate:.0f}" for lv in runs["busy"][name][clients])
            lines.append(f"| {label} | {clients} | {idle:.0f} | {busy:.0f} [{each}] | {busy / idle:.2f} |")
    lines += ["", "| Hearth, clients | busy / own idle (target >= 0.5) | busy vs transformers serve (target >= 1.2) "
              "| idle vs transformers serve |", "|---:|---:|---:|---:|"]  # fmt: skip
    for clients, row in head["ratios"].items():
        peer_busy, peer_idle = row.get("busy_vs_transformers_serve"), row.get("idle_vs_transformers_serve")
        lines.append(f"| {clients} | {row['busy_vs_own_idle']:.2f} | {_fmt(peer_busy)} | {_fmt(peer_idle)} |")
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def write_busy_report(runs: dict, args: dict, started: str, out: Path) -> str:
    """Write busy-latest.md/.json and a timestamped copy; return the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    head = summary(runs)
    text = markdown(runs, head, args, started)
    (out / "busy-latest.md").write_text(text)
    (out / f"busy-{time.strftime('%Y%m%d-%H%M%S')}.md").write_text(text)
    raw = {p: {n: {c: [[vars(s) for s in lv.samples] for lv in levels] for c, levels in servers.items()}
               for n, servers in phase.items()} for p, phase in runs.items()}  # fmt: skip
    (out / "busy-latest.json").write_text(json.dumps({"args": args, "summary": head, "raw": raw}, indent=1,
                                                     default=str))  # fmt: skip
    return text
