"""bench/: the command answers --help, and its load harness and report work against a real server (timings unchecked)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))


def test_help_lists_the_measurements():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "serve.py"), "--help"], capture_output=True, text=True,
                         timeout=60, check=True).stdout  # fmt: skip
    assert "--concurrency" in out and "--skip-transformers-serve" in out and "transformers serve" in out


def test_load_harness_and_report(api, tmp_path):
    """Two streaming clients, two requests each, against the live API; then the Markdown, JSON and PNG."""
    from load import run_level
    from report import write_report
    from serve import parse_args

    def body(i: int) -> dict:
        return {"messages": [{"role": "user", "content": f"count {i}"}], "max_tokens": 6, "stream": True,
                "ignore_eos": True, "stream_options": {"include_usage": True}}  # fmt: skip

    url = api.url("/v1/chat/completions")
    levels = {c: run_level(url, body, c, rounds=2) for c in (1, 2)}
    assert [len(levels[c].samples) for c in (1, 2)] == [2, 4]
    assert all(s.tokens == 6 and 0 < s.ttft <= s.total for lv in levels.values() for s in lv.samples)
    results = {"args": vars(parse_args([])), "model": "tiny-llama", "started": "now", "generate_tps": 10.0,
               "hearth": levels, "second_turn": {256: 0.01}, "second_turn_cold": {256: 0.02}}  # fmt: skip
    text = write_report(results, tmp_path)
    assert "| Hearth (continuous batching) | 2 |" in text and "API overhead ratio" in text
    saved = json.loads((tmp_path / "serve-latest.json").read_text())
    assert len(saved["raw"]["hearth"]["2"]["samples"]) == 4
    assert (tmp_path / "serve-latest.png").stat().st_size > 1000


@pytest.mark.slow
def test_the_readme_command_runs_on_a_tiny_model(tmp_path):
    """`python bench/serve.py` end to end, shrunk: every server starts, every measurement runs, the report is written."""
    argv = [sys.executable, str(ROOT / "bench" / "serve.py"), "--shape", "tiny", "--concurrency", "1,2", "--repeats",
            "1", "--rounds", "1", "--max-new-tokens", "4", "--history", "16", "--skip-unbatched", "--out",
            str(tmp_path)]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    text = (tmp_path / "serve-latest.md").read_text()
    assert "| transformers serve --continuous-batching | 2 |" in text and "| Hearth (continuous batching) | 2 |" in text
