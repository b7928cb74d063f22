"""What an API model costs: a Hearth upstream measured directly and through a second Hearth that proxies it
(`--device api`), in one run. Reports time to first content (median of interleaved requests; the difference is the
proxy's added latency) and the aggregate tokens/s of 32 concurrent streams both ways (serialisation would show as a
ratio well under 1). Writes bench/results/proxy-latest.{md,json}.

    python bench/proxy.py [--shape tiny] [--requests 60] [--clients 32] [--busy 1]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_model import build, prompt_text  # noqa: E402
from load import run_level, stream_once  # noqa: E402
from servers import ROOT, Process, free_port, start_hearth  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    """The bench's flags."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="tiny", choices=["60m", "1b", "tiny"], help="random model shape (default tiny)")
    p.add_argument("--requests", type=int, default=60, help="sequential requests per path for latency (default 60)")
    p.add_argument("--clients", type=int, default=32, help="concurrent streams for throughput (default 32)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens per throughput request (default 32)")
    p.add_argument("--threads", type=int, default=1, help="upstream CPU threads (default 1)")
    p.add_argument("--busy", type=int, default=0, help="competing CPU-bound processes during the run (default 0)")
    p.add_argument("--out", default=str(HERE / "results"), help="results folder (default bench/results)")
    return p.parse_args(argv)


def start_proxy(upstream_url: str, model: str) -> tuple[Process, str]:
    """server.py --device api in front of `upstream_url`; returns (process, base URL)."""
    argv = [sys.executable, "-u", str(ROOT / "server.py"), "--nowebui", "--api", "--api-port", str(free_port()),
            "--device", "api", "--api-base", upstream_url, "--model", model]  # fmt: skip
    process = Process(argv)
    return process, process.wait_for(r"OpenAI-compatible API URL: (\S+)").group(1)


def first_content_times(urls: dict[str, str], body: dict, count: int) -> dict[str, list[float]]:
    """Time to first content per path, requests alternating between the paths so drift hits both alike."""
    times: dict[str, list[float]] = {name: [] for name in urls}
    for i in range(count):
        order = list(urls) if i % 2 == 0 else list(reversed(urls))
        for name in order:
            times[name].append(stream_once(urls[name] + "/chat/completions", body).ttft)
    return times


def main(argv=None) -> int:
    """Run the comparison and write the report."""
    args = parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="hearth-proxy-bench-"))
    model = build(folder / "bench-model", args.shape).name
    processes = []
    try:
        upstream, direct = start_hearth(folder, model, max_batch=args.clients, threads=args.threads)
        processes.append(upstream)
        proxy, via = start_proxy(direct, model)
        processes.append(proxy)
        urls = {"direct": direct, "via Hearth": via}
        latency_body = {"model": model, "messages": [{"role": "user", "content": prompt_text(16)}], "max_tokens": 2,
                        "temperature": 0, "stream": True}  # fmt: skip
        for url in urls.values():  # warm both paths (connections, caches)
            for _ in range(3):
                stream_once(url + "/chat/completions", latency_body)
        from busy import CompetingLoad

        with CompetingLoad(args.busy):
            times = first_content_times(urls, latency_body, args.requests)

            def body(i: int) -> dict:
                return {"model": model, "messages": [{"role": "user", "content": prompt_text(16, offset=i)}],
                        "max_tokens": args.max_new_tokens, "ignore_eos": True, "temperature": 0, "stream": True,
                        "stream_options": {"include_usage": True}}  # fmt: skip

            levels = {}
            for name in ("direct", "via Hearth", "direct", "via Hearth"):  # twice each, alternating; best kept
                result = run_level(urls[name] + "/chat/completions", body, args.clients, 1)
                if name not in levels or result.aggregate > levels[name].aggregate:
                    levels[name] = result
    finally:
        for process in processes:
            process.stop()
    return report(args, times, levels)


def report(args, times: dict, levels: dict) -> int:
    """Print and save the results."""
    median = {name: statistics.median(values) for name, values in times.items()}
    added_ms = (median["via Hearth"] - median["direct"]) * 1000
    ratio = median["via Hearth"] / median["direct"]
    throughput = {name: level.aggregate for name, level in levels.items()}
    lines = [
        f"# API-model proxy overhead ({time.strftime('%Y-%m-%d %H:%M')})", "",
        f"Upstream: Hearth on a random `{args.shape}` model, {args.threads} thread(s); proxy: a second Hearth with "
        f"`--device api` in front of it; {args.busy} competing busy process(es). Same run, requests interleaved.", "",
        "| path | first content, median ms | p90 ms | 32-stream aggregate tok/s |", "|---|---|---|---|",
    ]
    for name in times:
        p90 = statistics.quantiles(times[name], n=10)[-1] * 1000
        lines.append(f"| {name} | {median[name] * 1000:.1f} | {p90:.1f} | {throughput[name]:.0f} |")
    lines += ["", f"- Added latency to first content: **{added_ms:.1f} ms** (ratio {ratio:.2f}).",
              f"- Throughput through the proxy with {args.clients} concurrent streams: "
              f"**{throughput['via Hearth'] / throughput['direct']:.2f}x** of direct."]  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "proxy-latest.md").write_text(text)
    raw = {"args": vars(args), "first_content_s": times, "added_ms": added_ms, "ratio": ratio,
           "aggregate_tok_s": throughput}  # fmt: skip
    (out / "proxy-latest.json").write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
