"""download-model.py fails cleanly offline and refuses bad names; nothing half-downloaded is left as a model."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args, cwd=ROOT):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "download-model.py"), *args], capture_output=True, text=True,
                          env=env, timeout=120, cwd=cwd)  # fmt: skip


def test_offline_download_fails_in_one_line(tmp_path):
    result = run("Qwen/Qwen2.5-0.5B-Instruct", "--output", str(tmp_path))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and "could not download Qwen/Qwen2.5-0.5B-Instruct" in lines[-1]
    assert "Traceback" not in result.stderr
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]  # no model folder appeared


def test_bad_arguments_exit_2(tmp_path):
    for args in (["not a repo"], ["../../etc"], ["a/b/c"], ["org/name", "--output", str(tmp_path / "missing")]):
        result = run(*args)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)


def test_help():
    result = run("--help")
    assert result.returncode == 0 and "ORG/NAME" in result.stdout
