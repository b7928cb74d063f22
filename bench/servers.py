"""Start and stop the servers under test (Hearth's server.py, `transformers serve`) as subprocesses."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
               "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1"}  # fmt: skip


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A server subprocess whose output goes to a log file; stopped with SIGTERM."""

    def __init__(self, argv: list[str], env: dict | None = None, threads: int | None = None):
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        full_env = {**os.environ, **OFFLINE_ENV, **(env or {})}
        if threads:
            full_env["OMP_NUM_THREADS"] = str(threads)
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)

    def wait_for(self, pattern: str, timeout: float = 600) -> re.Match:
        """Block until the log matches `pattern` (or the process dies)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, Path(self.log.name).read_text(errors="replace"))
            if match:
                return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"server did not start; log:\n{Path(self.log.name).read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
        os.unlink(self.log.name)


def start_hearth(model_dir: Path, model: str, *, max_batch: int, threads: int, prefix_cache_mb: int = 1024,
                 dtype: str = "auto", adapt_threads: bool = True) -> tuple[Process, str]:
    """server.py headless on a free port; returns (process, base URL ending in /v1)."""
    settings = Path(tempfile.mkdtemp()) / "settings.yaml"
    settings.write_text(f"model:\n  prefix_cache_mb: {prefix_cache_mb}\n  max_queue: 1024\n"
                        f"  adapt_threads: {str(adapt_threads).lower()}\n")  # fmt: skip
    argv = [sys.executable, "-u", str(ROOT / "server.py"), "--model-dir", str(model_dir), "--model", model,
            "--nowebui", "--api", "--api-port", str(free_port()), "--threads", str(threads),
            "--max-batch-size", str(max_batch), "--settings", str(settings), "--dtype", dtype]  # fmt: skip
    process = Process(argv, threads=threads)
    url = process.wait_for(r"OpenAI-compatible API URL: (\S+)").group(1)
    return process, url


def start_transformers_serve(model_path: Path, threads: int, device: str = "cpu") -> tuple[Process, str]:
    """`transformers serve --continuous-batching` forced to `model_path`; returns (process, base URL)."""
    port = free_port()
    exe = Path(sys.executable).with_name("transformers")
    argv = [str(exe), "serve", "--continuous-batching", "--device", device, "--port", str(port),
            "--host", "127.0.0.1", str(model_path)]  # fmt: skip
    process = Process(argv, env={"HF_HOME": tempfile.mkdtemp()}, threads=threads)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return process, url + "/v1"
        except requests.RequestException:
            pass
        if process.proc.poll() is not None:
            break
        time.sleep(0.5)
    log = Path(process.log.name).read_text(errors="replace")[-3000:]
    process.stop()
    raise RuntimeError(f"transformers serve did not start; log:\n{log}")


def start_llama_cpp_server(model_path: Path, threads: int, n_ctx: int = 4096) -> tuple[Process, str]:
    """llama-cpp-python's own server (`python -m llama_cpp.server`) on a GGUF file; returns (process, base URL)."""
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--host", "127.0.0.1",
            "--port", str(port), "--n_threads", str(threads), "--n_threads_batch", str(threads),
            "--n_ctx", str(n_ctx), "--verbose", "False",
            "--interrupt_requests", "False"]  # fmt: skip  (by default a new request cuts the running stream short)
    process = Process(argv, threads=threads)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/v1/models", timeout=2).status_code == 200:
                return process, url + "/v1"
        except requests.RequestException:
            pass
        if process.proc.poll() is not None:
            break
        time.sleep(0.5)
    log = Path(process.log.name).read_text(errors="replace")[-3000:]
    process.stop()
    raise RuntimeError(f"llama_cpp.server did not start; log:\n{log}")
