"""The README a newcomer follows: its two commands are the ones CI runs, and it shows the latest measurements."""
from __future__ import annotations

from conftest import ROOT

README = ROOT / "README.md"


def test_install_and_test_commands_are_what_ci_runs():
    text, ci = README.read_text(), (ROOT / ".ci" / "run").read_text()
    install = "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && .venv/bin/python server.py --api"
    assert install in text and "./run_tests.sh" in text
    assert "python3 -m venv .venv" in ci and "-r requirements.txt" in ci and ci.rstrip().endswith("./run_tests.sh")
    assert "torch==2.13.0" in (ROOT / "requirements.txt").read_text()


def test_shows_the_latest_benchmark_table_and_no_placeholders():
    text = README.read_text()
    latest = (ROOT / "bench" / "results" / "serve-latest.md").read_text()
    table = latest[latest.index("| server |"):].strip()
    assert table in text, "README's Performance table differs from bench/results/serve-latest.md"
    for placeholder in ("BENCH_TABLE", "DEMO_RESULTS", "TODO"):
        assert placeholder not in text
    for picture in ("docs/screenshot-chat.png", "bench/results/serve-latest.png"):
        assert f"]({picture})" in text and (ROOT / picture).is_file()
