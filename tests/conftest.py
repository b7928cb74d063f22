"""Shared fixtures: tiny real models in temp folders, loaded through the real loader. No network."""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_models import build_gpt2, build_llama  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device")
    config.addinivalue_line("markers", "browser: drives a real Chromium")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    """A models folder holding tiny-llama and tiny-gpt2."""
    root = tmp_path_factory.mktemp("models")
    build_llama(root / "tiny-llama")
    build_gpt2(root / "tiny-gpt2")
    return root


@pytest.fixture(scope="session")
def llama_dir(models_root) -> Path:
    """The tiny Llama's folder."""
    return models_root / "tiny-llama"


@pytest.fixture(scope="session")
def gpt2_dir(models_root) -> Path:
    """The tiny GPT-2's folder."""
    return models_root / "tiny-gpt2"


@pytest.fixture(scope="session")
def llama(llama_dir):
    """The tiny Llama loaded by the real Transformers loader (batch up to 8)."""
    from modules.loaders.transformers_loader import TransformersLoader

    return TransformersLoader.load(llama_dir, "tiny-llama", {"max_batch_size": 8, "threads": 2})


@pytest.fixture(scope="session")
def gpt2(gpt2_dir):
    """The tiny GPT-2 loaded by the real Transformers loader."""
    from modules.loaders.transformers_loader import TransformersLoader

    return TransformersLoader.load(gpt2_dir, "tiny-gpt2", {"max_batch_size": 8, "threads": 2})


@pytest.fixture
def scheduler():
    """A fresh scheduler with no model; closed after the test."""
    from modules.scheduler import Scheduler

    s = Scheduler(max_queue=16)
    yield s
    s.close()


@pytest.fixture(params=["llama", "gpt2"])
def served(request, scheduler):
    """(scheduler, loader) for each tiny model."""
    loader = request.getfixturevalue(request.param)
    scheduler.set_loader(loader)
    return scheduler, loader


class LiveServer:
    """A real HTTP server on a free loopback port, serving a Flask app from a thread."""

    def __init__(self, app):
        import threading

        from werkzeug.serving import make_server

        from extensions.openai.script import announcing_handler

        handler = announcing_handler(app.extensions["hearth"].runtime.scheduler)  # the server.py one
        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=handler)
        self.port = self.server.server_port
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        """Absolute URL of `path`."""
        return self.base_url + path

    def stop(self) -> None:
        """Shut the server down."""
        self.server.shutdown()
        self.server.server_close()


def models_with_broken(models_root: Path, root: Path) -> Path:
    """`root` holding copies of tiny-llama and tiny-gpt2 and a `broken` model whose weights cannot load."""
    import shutil

    for name in ("tiny-llama", "tiny-gpt2"):
        shutil.copytree(models_root / name, root / name)
    (root / "broken").mkdir()
    (root / "broken" / "config.json").write_text('{"model_type": "llama"}')
    (root / "broken" / "model.safetensors").write_bytes(b"\x00" * 4)
    (root / "broken" / "tokenizer.json").write_text("{}")
    return root


def make_runtime(models_root: Path, **overrides):
    """A runtime over `models_root` (no model loaded yet)."""
    from modules.config import load_settings
    from modules.runtime import build_runtime

    base = {"model.model_dir": str(models_root), "model.threads": 2, "model.max_batch_size": 8}
    base.update(overrides)
    return build_runtime(load_settings(None, base, root=ROOT))


@pytest.fixture(scope="session")
def api_runtime(models_root):
    """One runtime serving tiny-llama, shared by the API tests."""
    runtime = make_runtime(models_root)
    runtime.models.load("tiny-llama")
    yield runtime
    runtime.close()


@pytest.fixture(scope="session")
def api(api_runtime):
    """A live API server (no key) over the shared runtime."""
    from extensions.openai.app import create_app

    server = LiveServer(create_app(api_runtime, {"keepalive": 1}))
    yield server
    server.stop()


def with_server_settings(runtime, **server_fields):
    """The same runtime seen with other server settings (API key, --listen, ...)."""
    import dataclasses

    settings = runtime.settings
    server = dataclasses.replace(settings.server, **server_fields)
    return dataclasses.replace(runtime, settings=dataclasses.replace(settings, server=server))


def greedy_tokens(loader, prompts: list[str], steps: int = 12) -> list[list[int]]:
    """Greedy tokens of prompts decoded together through the loader's own start/step."""
    from modules.generation import SamplingParams
    from modules.loaders.base import SequenceSpec

    out = [[] for _ in prompts]
    for i, text in enumerate(prompts):
        loader.start(SequenceSpec(i, tuple(loader.encode(text)), SamplingParams(temperature=0), seed=0))
    for _ in range(steps):
        for event in loader.step():
            out[event.seq_id].append(event.token_id)
    for i in range(len(prompts)):
        loader.release(i)
    return out
