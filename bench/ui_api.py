#!/usr/bin/env python3
"""The web UI and the API in one server: does a chat in the browser hold up while API clients stream, and do they?

    python bench/ui_api.py                  # random ~60M Llama (fp32), 8 API clients, a headless Chromium chat
    python bench/ui_api.py --busy 1         # the same beside one competing CPU-bound process

One `server.py` with the UI and the API (Gradio's and Flask's threads in its process, Chromium in another). Three
phases, repeated: API clients alone, the browser chat alone, both at once. Reports the API's aggregate tokens/s and
the chat's words/s (this model's tokenizer has one token per word) in each, the ratios, and writes
bench/results/ui-api-latest.{md,json}. Needs Chromium (`apt-get install chromium`) and `playwright` (pip).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_model import build, prompt_text  # noqa: E402
from busy import CompetingLoad  # noqa: E402
from load import run_level  # noqa: E402
from servers import Process, free_port  # noqa: E402

ROOT = HERE.parent
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=8, help="API streaming clients (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens per API request and chat reply")
    p.add_argument("--threads", type=int, default=2, help="Hearth's CPU threads (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="rounds of the three phases (default 3)")
    p.add_argument("--busy", type=int, default=0, help="competing CPU-bound processes during every phase")
    p.add_argument("--fixed-threads", action="store_true",
                   help="Hearth with adapt_threads off (always --threads threads), to compare")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--out", default=str(HERE / "results"))
    return p.parse_args(argv)


def start_server(model: Path, args) -> tuple[Process, str, str]:
    """server.py with the UI and the API; returns (process, UI URL, API base URL)."""
    settings = Path(tempfile.mkdtemp()) / "settings.yaml"
    adapt = str(not args.fixed_threads).lower()
    settings.write_text(f"generation:\n  max_new_tokens: {args.max_new_tokens}\nchat:\n  user_data_dir: "
                        f"{json.dumps(tempfile.mkdtemp())}\nmodel:\n  max_queue: 1024\n  adapt_threads: {adapt}\n")
    argv = [sys.executable, "-u", str(ROOT / "server.py"), "--model-dir", str(model.parent), "--model", model.name,
            "--api", "--api-port", str(free_port()), "--listen-port", str(free_port()), "--threads",
            str(args.threads), "--max-batch-size", "16", "--settings", str(settings)]  # fmt: skip
    process = Process(argv)
    ui = process.wait_for(r"Web UI: (\S+)").group(1)
    api = process.wait_for(r"OpenAI-compatible API URL: (\S+)").group(1)
    return process, ui, api


class BrowserChat:
    """A headless Chromium on the chat tab, sending messages and timing each whole streamed reply."""

    def __init__(self, url: str, chromium: str):
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self._browser = self._pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        self.page = self._browser.new_page(viewport={"width": 1280, "height": 860})
        self.page.goto(url, wait_until="load")
        self.page.wait_for_selector("#context-info", timeout=60_000)
        time.sleep(1)

    def reply_rate(self, text: str) -> float:
        """Send `text`; words per second of the reply, from the click to the end of streaming."""
        bots = self.page.locator('#chat [data-testid="bot"]')
        before = bots.count()
        self.page.fill("#chat-input textarea", text)
        start = time.perf_counter()
        self.page.click("#send")
        while bots.count() <= before or self._busy():
            time.sleep(0.02)
        elapsed = time.perf_counter() - start
        return len(bots.nth(before).inner_text().split()) / elapsed

    def clear(self) -> None:
        """A fresh chat, so histories do not grow from phase to phase."""
        self.page.click("#new-chat")
        time.sleep(0.3)

    def _busy(self) -> bool:
        return self.page.evaluate("() => [...document.querySelectorAll('[data-testid=status-tracker]')]"
                                  ".some(t => !t.classList.contains('hide') && t.closest('#chat'))")  # fmt: skip

    def close(self) -> None:
        """Close the browser."""
        self._browser.close()
        self._pw.stop()


def api_body(args):
    """Request i: a distinct 32-word prompt, pinned length."""

    def make(i: int) -> dict:
        return {"messages": [{"role": "user", "content": prompt_text(32, offset=i * 97)}], "stream": True,
                "max_tokens": args.max_new_tokens, "temperature": 0, "ignore_eos": True,
                "stream_options": {"include_usage": True}}  # fmt: skip

    return make


def chat_rates(chat: BrowserChat, count: int) -> list[float]:
    """`count` chat turns' words/s."""
    rates = [chat.reply_rate(prompt_text(12, offset=500 + i)) for i in range(count)]
    chat.clear()
    return rates


def one_round(chat: BrowserChat, url: str, args) -> dict:
    """API alone, chat alone, then both at once."""
    make = api_body(args)
    api_alone = run_level(url, make, args.clients, 1).aggregate
    chat_alone = statistics.median(chat_rates(chat, 3))
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(api=run_level(url, make, args.clients, 2).aggregate))
    thread.start()
    time.sleep(0.3)
    together = []
    while thread.is_alive():
        together += chat_rates(chat, 1)
    thread.join()
    return {"api_alone": api_alone, "chat_alone": chat_alone, "api_with_chat": result["api"],
            "chat_with_api": statistics.median(together)}


def report(rounds: list[dict], args, started: str) -> str:
    """Markdown of the median of each figure and the ratios."""
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    per_client = med["api_with_chat"] / args.clients
    lines = [f"# UI and API together ({started})", "",
             f"Random 60M Llama (fp32), {args.threads} threads, {args.clients} streaming API clients x "
             f"{args.max_new_tokens} tokens, one headless Chromium chatting through the web UI"
             + (f", {args.busy} competing CPU-bound process(es)" if args.busy else "")
             + (", adapt_threads off" if args.fixed_threads else "")
             + f"; medians of {len(rounds)} rounds.", "",
             "| figure | alone | together | together / alone |", "|---|---:|---:|---:|",
             f"| API aggregate tok/s | {med['api_alone']:.0f} | {med['api_with_chat']:.0f} | "
             f"{med['api_with_chat'] / med['api_alone']:.2f} |",
             f"| browser chat words/s | {med['chat_alone']:.1f} | {med['chat_with_api']:.1f} | "
             f"{med['chat_with_api'] / med['chat_alone']:.2f} |", "",
             f"The chat's share while batched with the API clients: {med['chat_with_api']:.1f} words/s against "
             f"{per_client:.1f} tok/s per API client ({med['chat_with_api'] / per_client:.2f}x).",
             f"Rounds: {json.dumps([{k: round(v, 1) for k, v in r.items()} for r in rounds])}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """Run the phases and write the report."""
    args = parse_args(argv)
    model = build(HERE / ".cache" / "random-60m-float32", "60m", "float32", "cpu")
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    process, ui, api = start_server(model, args)
    chat = None
    try:
        chat = BrowserChat(ui, args.chromium)
        url = api + "/chat/completions"
        run_level(url, api_body(args), 2, 1)  # warm-up
        chat_rates(chat, 1)
        with CompetingLoad(args.busy):
            rounds = [one_round(chat, url, args) for _ in range(args.repeats)]
    finally:
        if chat is not None:
            chat.close()
        process.stop()
    text = report(rounds, args, started)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = ("-busy" if args.busy else "") + ("-fixed-threads" if args.fixed_threads else "")
    (out / f"ui-api{tag}-latest.md").write_text(text)
    (out / f"ui-api{tag}-latest.json").write_text(json.dumps({"args": vars(args), "rounds": rounds}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
