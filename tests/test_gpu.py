"""GPU-only checks (skipped without CUDA): bf16 by default, batched greedy equals solo, device_map placement."""
from __future__ import annotations

import pytest

from modules.generation import GenerationRequest, SamplingParams

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda_loader(llama_dir):
    from modules.loaders.transformers_loader import TransformersLoader

    return TransformersLoader.load(llama_dir, "tiny-llama", {"max_batch_size": 8})


def test_loads_on_cuda_in_half_precision(cuda_loader):
    assert cuda_loader.info.device == "cuda" and cuda_loader.info.dtype in ("bfloat16", "float16")
    assert next(cuda_loader.engine.model.parameters()).is_cuda


def test_batched_greedy_equals_solo_on_cuda(cuda_loader, scheduler):
    scheduler.set_loader(cuda_loader)
    prompts = [f"Request {i}: the quick brown fox" + " jumps" * i for i in range(8)]
    make = lambda p: GenerationRequest(tuple(cuda_loader.encode(p)), SamplingParams(temperature=0), max_tokens=16,
                                       ban_eos=True)  # noqa: E731
    solo = [scheduler.submit(make(p)).result().choices[0].text for p in prompts]
    handles = [scheduler.submit(make(p)) for p in prompts]
    assert [h.result().choices[0].text for h in handles] == solo


def test_seeded_sampling_reproducible_on_cuda(cuda_loader, scheduler):
    scheduler.set_loader(cuda_loader)
    req = GenerationRequest(tuple(cuda_loader.encode("Hello")), SamplingParams(temperature=1.0, seed=7), max_tokens=12)
    assert scheduler.submit(req).result().choices[0].text == scheduler.submit(req).result().choices[0].text


def test_cpu_flag_keeps_model_on_cpu(llama_dir):
    from modules.loaders.transformers_loader import TransformersLoader

    loader = TransformersLoader.load(llama_dir, "tiny-llama", {"cpu": True})
    assert loader.info.device == "cpu" and loader.info.dtype == "float32"
