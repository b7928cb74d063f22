"""server.py as users run it: flags, one-line errors with exit code 2, headless API, TLS, env variables."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
FLAGS = [
    "--model", "--model-dir", "--loader", "--cpu", "--dtype", "--api", "--api-port", "--api-key", "--admin-key",
    "--listen", "--listen-host", "--listen-port", "--nowebui", "--extensions", "--settings", "--character",
    "--ssl-keyfile", "--ssl-certfile", "--trust-remote-code",
]  # fmt: skip


def run(*args, env=None, timeout=120):
    return subprocess.run(
        [sys.executable, str(ROOT / "server.py"), *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, cwd=ROOT,
    )  # fmt: skip


def test_help_lists_flags_without_heavy_imports():
    result = run("--help")
    assert result.returncode == 0
    for flag in FLAGS:
        assert flag in result.stdout
    code = (
        "import sys; sys.path.insert(0, %r); import server\n"
        "try:\n    server.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'gradio', 'flask') if m in sys.modules]\n"
        "print('HEAVY', heavy)" % str(ROOT)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert "HEAVY []" in out


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--api-port", "abc"], "invalid port"),
        (["--api-port", "70000"], "out of range"),
        (["--dtype", "float8"], "invalid choice"),
        (["--no-such-flag"], "unrecognized arguments"),
        (["--model-dir", "/no/such/folder", "--nowebui"], "model folder"),
        (["--settings", "/no/such/settings.yaml", "--nowebui"], "not found"),
    ],
)
def test_bad_flags_one_line_exit_2(args, fragment):
    result = run(*args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in result.stderr


def test_unknown_character_exits_2_listing_the_characters(models_root):
    result = run("--model-dir", str(models_root), "--model", "tiny-llama", "--nowebui", "--character", "Nope")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert lines[-1] == "server.py: error: character 'Nope' not found in characters/ (choose from Assistant, Example)"


def test_missing_and_broken_models_exit_2(models_root, tmp_path):
    result = run("--model-dir", str(models_root), "--model", "tiny-lama", "--nowebui")
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "not found" in last
    assert "did you mean 'tiny-llama'?" in last and "models: tiny-gpt2, tiny-llama" in last
    broken = tmp_path / "models"
    (broken / "bad").mkdir(parents=True)
    (broken / "bad" / "config.json").write_text("{oops")
    result = run("--model-dir", str(broken), "--model", "bad", "--nowebui")
    assert result.returncode == 2 and "config.json is not valid JSON" in result.stderr.strip().splitlines()[-1]
    result = run("--model-dir", str(models_root), "--nowebui", "--extensions", "nosuchext")
    assert result.returncode == 2 and "nosuchext" in result.stderr.strip().splitlines()[-1]


class Server:
    """server.py in a subprocess; the API URL is read from what it prints."""

    def __init__(self, *args, env=None):
        self.proc = subprocess.Popen(
            [sys.executable, "-u", str(ROOT / "server.py"), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env={**os.environ, **(env or {})}, cwd=ROOT,
        )  # fmt: skip
        self.output: list[str] = []
        self.url = self._wait_for_url()

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + 120
        for line in self.proc.stdout:
            self.output.append(line)
            match = re.search(r"OpenAI-compatible API URL: (\S+)", line)
            if match:
                return match.group(1)
            if time.monotonic() > deadline:
                break
        raise AssertionError("server did not start:\n" + "".join(self.output))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            self.output.extend(self.proc.stdout.readlines())  # what it printed after starting
            self.proc.stdout.close()


def test_headless_api_start_and_clean_shutdown(models_root):
    server = Server("--model-dir", str(models_root), "--model", "tiny-llama", "--nowebui", "--api", "--api-port", "0",
                    "--api-key", "sk-secret-1")  # fmt: skip
    try:
        assert server.url.startswith("http://127.0.0.1:")
        auth = {"Authorization": "Bearer sk-secret-1"}
        assert requests.get(server.url + "/models", timeout=10).status_code == 401
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        response = requests.post(server.url + "/chat/completions", json=body, headers=auth, timeout=60)
        assert response.status_code == 200 and response.json()["model"] == "tiny-llama"
        streamed = requests.post(server.url + "/chat/completions", json={**body, "stream": True}, headers=auth,
                                 timeout=60)  # fmt: skip
        assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
    finally:
        assert server.stop() == 0
    assert "sk-secret-1" not in "".join(server.output)
    assert not [line for line in server.output if "Warning" in line], "".join(server.output)  # a quiet console


def test_tls_env_port_and_settings_key(models_root, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True,
    )  # fmt: skip
    settings = tmp_path / "settings.yaml"
    settings.write_text("openai-debug: 1\nmodel:\n  max_batch_size: 2\n")
    port = _free_port()
    server = Server("--model-dir", str(models_root), "--model", "tiny-llama", "--nowebui", "--extensions", "openai",
                    "--settings", str(settings), env={"OPENEDAI_PORT": str(port), "OPENEDAI_CERT_PATH": str(cert),
                                                      "OPENEDAI_KEY_PATH": str(key)})  # fmt: skip
    try:
        assert server.url == f"https://127.0.0.1:{port}/v1"
        response = requests.get(server.url + "/models", timeout=10, verify=False)
        assert response.status_code == 200 and response.json()["data"][0]["id"] == "tiny-llama"
    finally:
        server.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
