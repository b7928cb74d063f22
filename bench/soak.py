#!/usr/bin/env python3
"""Soak test: many clients against one real server for a long time; errors, latency over time, memory.

    python bench/soak.py                      # 16 clients, 30 minutes, the random ~60M Llama (fp32)
    python bench/soak.py --minutes 2          # a quick look

Clients mix streaming and plain chat and completion requests; some cancel a stream after a few chunks, some drop the
connection mid-stream. Every answer must be a 200 with a finished body or stream (`[DONE]`), or, for a cut
connection, nothing at all: anything else counts as an error. Reports per-minute p50/p95 request latency, requests,
errors, and the server's resident memory (RSS) at the start (after warm-up) and the end; writes
bench/results/soak-latest.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_model import build, prompt_text  # noqa: E402
from servers import start_hearth  # noqa: E402

KINDS = ("stream", "plain", "completion", "cancel", "drop")


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--shape", default="60m", choices=["60m", "tiny"])
    p.add_argument("--prefix-cache-mb", type=int, default=1024,
                   help="the server's prefix cache budget (default 1024); smaller fills sooner, so growth after it "
                        "shows leaks rather than the cache filling")
    p.add_argument("--out", default=str(HERE / "results"))
    return p.parse_args(argv)


def rss_mb(pid: int) -> float:
    """Resident memory of a process, MB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def one_request(base: str, kind: str, rng: random.Random) -> None:
    """Send one request of `kind`; raise on anything but a complete, well-formed answer."""
    tokens = rng.randint(8, 64)
    messages = [{"role": "user", "content": prompt_text(rng.randint(8, 64), offset=rng.randint(0, 9999))}]
    if kind == "completion":
        body = {"prompt": prompt_text(24, offset=rng.randint(0, 9999)), "max_tokens": tokens, "temperature": 0.8}
        answer = requests.post(base + "/completions", json=body, timeout=600)
        answer.raise_for_status()
        assert answer.json()["choices"][0]["finish_reason"] in ("stop", "length")
        return
    body = {"messages": messages, "max_tokens": tokens, "temperature": 0.8, "stream": kind != "plain"}
    if kind == "plain":
        answer = requests.post(base + "/chat/completions", json=body, timeout=600)
        answer.raise_for_status()
        assert answer.json()["choices"][0]["finish_reason"] in ("stop", "length")
        return
    with requests.post(base + "/chat/completions", json=body, stream=True, timeout=600) as answer:
        answer.raise_for_status()
        lines = answer.iter_lines()
        seen = 0
        for line in lines:
            if line == b"data: [DONE]":
                return
            if line.startswith(b"data: "):
                assert "error" not in json.loads(line[6:]), line
                seen += 1
                if kind in ("cancel", "drop") and seen >= 3:
                    if kind == "drop":
                        answer.raw._fp.fp.raw._sock.close()  # a client that vanishes without closing cleanly
                    return  # cancel: closing the response ends the stream for the server
        raise AssertionError("stream ended without [DONE]")


def client(base: str, seed: int, until: float, log: list, lock: threading.Lock) -> None:
    """Send requests back to back until `until`, recording (end time, seconds, kind, error or None)."""
    rng = random.Random(seed)
    while time.monotonic() < until:
        kind = rng.choice(KINDS)
        start = time.monotonic()
        error = None
        try:
            one_request(base, kind, rng)
        except Exception as exc:  # every failure is a finding, counted and shown
            error = f"{type(exc).__name__}: {exc}"[:300]
        with lock:
            log.append((time.monotonic(), time.monotonic() - start, kind, error))


def watch_rss(pid: int, until: float, samples: list) -> None:
    """Append (time, RSS MB) every 10 s until `until`."""
    while time.monotonic() < until:
        samples.append((time.monotonic(), rss_mb(pid)))
        time.sleep(10)


def report(log: list, started: float, rss: list, args) -> tuple[str, dict]:
    """Per-minute table and totals as Markdown, and the same as a dict."""
    minutes: dict[int, list] = {}
    for end, seconds, kind, error in log:
        minutes.setdefault(int((end - started) // 60), []).append((seconds, kind, error))
    rows = []
    for minute, items in sorted(minutes.items()):
        done = sorted(s for s, kind, e in items if e is None and kind not in ("cancel", "drop"))
        p50 = statistics.median(done) if done else 0.0
        p95 = done[min(len(done) - 1, int(0.95 * len(done)))] if done else 0.0
        in_minute = [mb for at, mb in rss if int((at - started) // 60) == minute]
        rows.append({"minute": minute + 1, "requests": len(items), "errors": sum(1 for *_, e in items if e),
                     "p50_s": round(p50, 3), "p95_s": round(p95, 3), "rss_mb": round(max(in_minute, default=0))})
    errors = [e for *_, e in log if e]
    # The prefix cache (prefix_cache_mb) fills with finished requests' keys/values during the first minutes by
    # design; growth after it is full is what a leak would show, so it is measured from minute 5 (or the first).
    settled = [mb for at, mb in rss if at - started >= min(300, args.minutes * 30)] or [mb for _, mb in rss]
    growth = (settled[-1] - settled[0]) / settled[0] if settled and settled[0] else 0.0
    lines = [f"# Soak ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"{args.clients} clients for {args.minutes:g} minutes against `server.py` (random `{args.shape}` Llama, "
             f"fp32, max batch 16, prefix cache {args.prefix_cache_mb} MB); each request one of {', '.join(KINDS)} at random, 8-64 new tokens.", "",
             f"Requests: {len(log)}; errors: {len(errors)}; server RSS {rss[0][1]:.0f} MB after warm-up, "
             f"{rss[-1][1]:.0f} MB at the end; {growth:+.1%} once the prefix cache had filled (from "
             f"{settled[0]:.0f} MB).", "",
             "| minute | requests | errors | p50 s | p95 s | RSS MB |", "|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    lines += [f"| {r['minute']} | {r['requests']} | {r['errors']} | {r['p50_s']} | {r['p95_s']} | {r['rss_mb']} |"
              for r in rows]
    if errors:
        lines += ["", "First errors:", *[f"- {e}" for e in errors[:10]]]
    data = {"args": vars(args), "requests": len(log), "errors": errors, "rss_mb": [mb for _, mb in rss],
            "rss_growth_settled": growth,
            "minutes": rows}  # fmt: skip
    return "\n".join(lines) + "\n", data


def main(argv=None) -> int:
    """Run the soak and write the report; exit 1 if any request failed."""
    args = parse_args(argv)
    model = build(HERE / ".cache" / f"random-{args.shape}-float32", args.shape, "float32", "cpu")
    process, base = start_hearth(model.parent, model.name, max_batch=16, threads=2, dtype="float32",
                                 prefix_cache_mb=args.prefix_cache_mb)  # fmt: skip
    try:
        warm: list = []
        client(base, -1, time.monotonic() + 20, warm, threading.Lock())  # warm-up, not counted
        log: list = []
        rss: list = []
        lock = threading.Lock()
        started = time.monotonic()
        until = started + args.minutes * 60
        threads = [threading.Thread(target=client, args=(base, i, until, log, lock)) for i in range(args.clients)]
        threads.append(threading.Thread(target=watch_rss, args=(process.proc.pid, until, rss)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        health = requests.get(base.removesuffix("/v1") + "/v1/internal/health", timeout=30).json()
        rss.append((time.monotonic(), rss_mb(process.proc.pid)))
    finally:
        process.stop()
    text, data = report(log, started, rss, args)
    text += f"\nAfter the soak: health {health['status']}, waiting {health['waiting']}, active {health['active']}.\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak-latest.md").write_text(text)
    (out / "soak-latest.json").write_text(json.dumps(data, indent=1))
    print(text)
    return 1 if data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
