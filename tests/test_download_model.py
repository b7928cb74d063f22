"""download-model.py fails cleanly offline and refuses bad names; nothing half-downloaded is left as a model."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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


GGUF_REPO = ["README.md", "config.json", "mmproj-model-f16.gguf", "model-Q4_K_M.gguf", "model-Q8_0.gguf",
             "big/model-F16-00001-of-00002.gguf", "big/model-F16-00002-of-00002.gguf"]  # fmt: skip


@pytest.fixture
def downloader(monkeypatch):
    """download-model.py as a module, with the Hub replaced by GGUF_REPO (snapshot_download writes what it is asked)."""
    import fnmatch
    import importlib.util

    import huggingface_hub

    spec = importlib.util.spec_from_file_location("download_model", ROOT / "download-model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def snapshot_download(repo_id, revision, local_dir, allow_patterns, ignore_patterns, token):
        for name in GGUF_REPO:
            if allow_patterns is None or any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                (Path(local_dir) / name).parent.mkdir(parents=True, exist_ok=True)
                (Path(local_dir) / name).write_text(name)

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo, revision: list(GGUF_REPO))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return module


def test_gguf_quantizations_are_listed_and_one_is_picked(downloader, tmp_path, capsys):
    models = downloader.gguf_models(GGUF_REPO)
    assert list(models) == ["big/model-F16.gguf", "model-Q4_K_M.gguf", "model-Q8_0.gguf"]  # no mmproj, splits as one
    assert downloader.main(["org/model-GGUF", "--output", str(tmp_path)]) == 2  # no terminal to ask in
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "model-Q4_K_M.gguf, model-Q8_0.gguf" in message and "--specific-file" in message
    final = downloader.download("org/model-GGUF", "main", tmp_path, None, None, ask=lambda names: names[2])
    assert final == tmp_path / "model-Q8_0.gguf" and final.read_text() == "model-Q8_0.gguf"  # straight into models/
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-Q8_0.gguf"]  # the partial folder is gone


def test_specific_gguf_file_and_split_models(downloader, tmp_path):
    from modules.loaders.registry import detect_loader

    assert downloader.main(["org/model-GGUF", "--specific-file", "model-Q4_K_M.gguf", "--output", str(tmp_path)]) == 0
    assert (tmp_path / "model-Q4_K_M.gguf").is_file() and detect_loader(tmp_path / "model-Q4_K_M.gguf") == "llama.cpp"
    split = downloader.download("org/model-GGUF", "main", tmp_path, None, None, ask=lambda names: names[0])
    assert split == tmp_path / "org_model-GGUF" and detect_loader(split) == "llama.cpp"
    assert sorted(p.name for p in split.iterdir()) == ["model-F16-00001-of-00002.gguf", "model-F16-00002-of-00002.gguf"]
