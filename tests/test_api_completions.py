"""POST /v1/completions: prompt forms, echo, logprobs, suffix, streaming, spec conformance."""
from __future__ import annotations

import pytest
import requests

import openai_spec

needs_spec = pytest.mark.skipif(not openai_spec.available(), reason="../shared/openai-openapi.yaml not present")


@pytest.fixture(scope="module")
def client(api):
    from openai import OpenAI

    return OpenAI(base_url=api.url("/v1"), api_key="unused", max_retries=0)


def post(api, body, **kwargs):
    return requests.post(api.url("/v1/completions"), json=body, timeout=60, **kwargs)


def test_string_prompt_default_max_tokens_is_16(client):
    from openai.types import Completion

    result = client.completions.create(model="tiny-llama", prompt="Once upon a time", temperature=0,
                                       extra_body={"ignore_eos": True})  # fmt: skip
    assert isinstance(result, Completion)
    assert result.usage.completion_tokens == 16 and result.choices[0].finish_reason == "length"


def test_prompt_forms_and_choice_indexes(api_runtime, client):
    loader = api_runtime.models.loader
    ids = loader.encode("The quick brown fox")
    by_text = client.completions.create(model="x", prompt="The quick brown fox", max_tokens=5, temperature=0)
    by_ids = client.completions.create(model="x", prompt=ids, max_tokens=5, temperature=0)
    assert by_text.choices[0].text == by_ids.choices[0].text
    many = client.completions.create(
        model="x", prompt=["The quick brown fox", "Numbers:"], max_tokens=5, temperature=0, n=2
    )
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert many.choices[0].text == by_text.choices[0].text
    lists = client.completions.create(model="x", prompt=[ids, loader.encode("Numbers:")], max_tokens=5, temperature=0)
    assert lists.choices[0].text == by_text.choices[0].text and lists.choices[1].text == many.choices[2].text


def test_stream_equals_non_stream_with_usage(client):
    kwargs = dict(model="x", prompt=["Once upon", "Hello"], max_tokens=10, temperature=0)
    whole = client.completions.create(**kwargs)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    texts = ["", ""]
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert texts == [c.text for c in whole.choices]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_echo_with_logprobs(client):
    prompt = "The quick brown fox"
    result = client.completions.create(model="x", prompt=prompt, max_tokens=4, temperature=0, echo=True, logprobs=2,
                                       extra_body={"ignore_eos": True})  # fmt: skip
    choice = result.choices[0]
    assert choice.text.startswith(prompt)
    lp = choice.logprobs
    # Every token has a real logprob: the first prompt token is scored after BOS (spec: numbers only).
    assert all(isinstance(v, float) and v < 0 for v in lp.token_logprobs)
    prompt_tokens = result.usage.prompt_tokens
    assert len(lp.tokens) == prompt_tokens + 4 and lp.text_offset[0] == 0
    assert token_bytes(lp.tokens).decode("utf-8", errors="replace") == choice.text


def token_bytes(tokens: list[str]) -> bytes:
    """Reassemble raw bytes from logprob tokens; partial characters come as OpenAI's `bytes:\\xNN`."""
    out = b""
    for token in tokens:
        if token.startswith("bytes:"):
            out += bytes(int(h, 16) for h in token[len("bytes:") :].split("\\x")[1:])
        else:
            out += token.encode()
    return out


def test_logprobs_without_echo(client):
    result = client.completions.create(model="x", prompt="Hi", max_tokens=3, temperature=0, logprobs=0,
                                       extra_body={"ignore_eos": True})  # fmt: skip
    lp = result.choices[0].logprobs
    assert len(lp.tokens) == 3 and lp.top_logprobs == [{}, {}, {}]


def test_suffix_needs_fim_model(api):
    response = post(api, {"prompt": "def f(", "suffix": "return x"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "suffix"


def test_echo_streams_prompt_first(api):
    raw = post(api, {"prompt": "Hello there", "max_tokens": 3, "echo": True, "stream": True}).text
    chunks = openai_spec.stream_chunks(raw)
    assert chunks[0]["choices"][0]["text"] == "Hello there"


@needs_spec
def test_bodies_and_chunks_match_openai_spec(api):
    body = {"prompt": ["a", "b"], "max_tokens": 5, "logprobs": 2, "echo": True, "n": 2, "seed": 1}
    openai_spec.validate(post(api, body).json(), "CreateCompletionResponse")
    raw = post(api, {**body, "stream": True, "stream_options": {"include_usage": True}}).text
    chunks = openai_spec.stream_chunks(raw)
    for chunk in chunks:
        openai_spec.validate_completion_chunk(chunk)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] > 0


@pytest.mark.parametrize(
    "body, param",
    [
        ({"prompt": []}, "prompt"),
        ({"prompt": [1, 99999]}, "prompt"),
        ({"prompt": "x", "best_of": 3}, "best_of"),
        ({"prompt": "x", "logprobs": 50}, "logprobs"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "max_tokens": -1, "echo": True}, "max_tokens"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "temperature": 50}, "temperature"),
    ],
)
def test_bad_values(api, body, param):
    response = post(api, body)
    assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_echo_only_scores_the_prompt(client):
    """lm-evaluation-harness style: echo, logprobs, max_tokens=0."""
    result = client.completions.create(model="x", prompt="The quick brown fox", max_tokens=0, echo=True, logprobs=1)
    choice = result.choices[0]
    assert choice.text == "The quick brown fox" and result.usage.completion_tokens == 0
    assert all(isinstance(v, float) and v <= 0 for v in choice.logprobs.token_logprobs)
    assert token_bytes(choice.logprobs.tokens).decode() == choice.text
