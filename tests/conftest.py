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
