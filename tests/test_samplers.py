"""One definition of the sampler parameters, and one resolution order: request > entry > generation_config > Hearth."""
from __future__ import annotations

import dataclasses

import pytest
import requests

from conftest import LiveServer


def test_every_layer_reads_the_one_table():
    from extensions.openai.schemas import ChatCompletionRequest, CompletionRequest, LogitsRequest
    from modules.config import GenerationSettings
    from modules.engine.base import SamplerValues
    from modules.generation import SamplingParams
    from modules.presets import NEUTRAL
    from modules.samplers import DEFAULTS, SAMPLERS

    params, settings = SamplingParams(), GenerationSettings()
    values = {f.name for f in dataclasses.fields(SamplerValues)}
    for s in SAMPLERS:
        assert getattr(params, s.name) == getattr(settings, s.name) == NEUTRAL[s.name] == DEFAULTS[s.name]
        assert s.name in values
        for schema in (ChatCompletionRequest, CompletionRequest, LogitsRequest):
            assert s.name in schema.model_fields
            described = schema.model_json_schema()["properties"][s.name]  # the OpenAPI document shows the range
            assert described.get("maximum") == s.high and s.low in (described.get("minimum"),
                                                                    described.get("exclusiveMinimum"))
        low, high, _ = s.slider
        for value in (low, high, s.default):  # the UI's slider stays inside the allowed range
            s.check(value)


@pytest.mark.parametrize("name, bad", [("temperature", -0.1), ("top_p", 0.0), ("top_k", 1.5), ("min_p", 2)])
def test_ranges_are_checked_where_sampling_params_are_built(name, bad):
    from modules.errors import InvalidParameter
    from modules.generation import SamplingParams

    with pytest.raises(InvalidParameter) as exc:
        SamplingParams(**{name: bad}).validate()
    assert exc.value.param == name


def test_resolution_order(llama):
    from modules.config import GenerationSettings
    from modules.engine.base import SamplerValues
    from modules.engine.params import sampling_params

    info = dataclasses.replace(llama.info, generation_defaults={"temperature": 0.6, "top_p": 0.8, "top_k": 40})
    hearth = GenerationSettings(min_p=0.05)
    entry = {"temperature": 0.7, "top_p": 0.9}
    got = sampling_params(SamplerValues(temperature=0.5), info, hearth, entry)
    assert (got.temperature, got.top_p, got.top_k, got.min_p) == (0.5, 0.9, 40, 0.05)
    assert sampling_params(SamplerValues(), info, hearth, {}).temperature == 0.6


def test_entry_sampler_settings_serve_below_the_request(models_root):
    from extensions.openai.app import create_app
    from test_pool import pool_runtime

    serving = {"models": {"greedy": {"model": "tiny-llama", "temperature": 0, "seed": 3}}}
    runtime = pool_runtime(models_root, serving)
    server = LiveServer(create_app(runtime))
    body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 12, "n": 2, "ignore_eos": True}
    try:
        greedy = requests.post(server.url("/v1/chat/completions"), json=body, timeout=60).json()["choices"]
        assert greedy[0]["message"]["content"] == greedy[1]["message"]["content"]
        hot = requests.post(server.url("/v1/chat/completions"), json={**body, "temperature": 1.5, "seed": 7},
                            timeout=60).json()["choices"]  # fmt: skip
        assert hot[0]["message"]["content"] != hot[1]["message"]["content"]
        info = requests.get(server.url("/v1/internal/model/info"), timeout=10).json()["entries"][0]
        assert info["settings"] == {"seed": 3, "temperature": 0}
        bad = requests.post(server.url("/v1/internal/model/load"),
                            json={"model_name": "tiny-llama", "name": "x", "settings": {"temperature": 500}},
                            timeout=60)  # fmt: skip
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "settings.temperature"
    finally:
        server.stop()
        runtime.close()


def test_bad_entry_sampler_in_serving_file():
    from modules.errors import SettingsError
    from modules.serving import parse_serving

    with pytest.raises(SettingsError, match=r"models.a.top_p must be in \(0, 1\]"):
        parse_serving({"models": {"a": {"model": "x", "top_p": 0}}})
