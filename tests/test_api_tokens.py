"""/v1/internal/encode, /decode, /token-count and /logits."""
from __future__ import annotations

import math

import pytest
import requests


def post(api, path, body):
    return requests.post(api.url(path), json=body, timeout=60)


def test_encode_decode_count_round_trip(api, api_runtime):
    loader = api_runtime.models.loader
    encoded = post(api, "/v1/internal/encode", {"text": "Hello café 🙂"}).json()
    assert encoded["tokens"] == loader.encode("Hello café 🙂", add_special_tokens=True)
    assert encoded["length"] == len(encoded["tokens"])
    assert post(api, "/v1/internal/decode", {"tokens": encoded["tokens"]}).json()["text"] == "Hello café 🙂"
    assert post(api, "/v1/internal/token-count", {"text": "Hello café 🙂"}).json()["length"] == encoded["length"]


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/internal/encode", {"text": 5}, "text"),
        ("/v1/internal/decode", {"tokens": [1, 10**9]}, "tokens"),
        ("/v1/internal/decode", {"tokens": "1,2"}, "tokens"),
        ("/v1/internal/logits", {"prompt": "x", "top_logits": 0}, "top_logits"),
        ("/v1/internal/logits", {"prompt": "x", "use_samplers": True, "temperature": -1}, "temperature"),
    ],
)
def test_bad_token_requests(api, path, body, param):
    response = post(api, path, body)
    assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_logits_raw_matches_greedy_choice(api):
    raw = post(api, "/v1/internal/logits", {"prompt": "The quick brown fox", "use_samplers": False}).json()
    assert len(raw["top_tokens"]) == 50 and len(raw["logits"]) <= 50
    probabilities = [t["probability"] for t in raw["top_tokens"]]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6
    greedy = post(api, "/v1/completions", {"prompt": "The quick brown fox", "max_tokens": 1, "temperature": 0,
                                           "logprobs": 1, "ignore_eos": True}).json()  # fmt: skip
    assert greedy["choices"][0]["logprobs"]["tokens"][0] == raw["top_tokens"][0]["token"]
    assert math.isclose(math.exp(greedy["choices"][0]["logprobs"]["token_logprobs"][0]), probabilities[0], rel_tol=1e-4)


def test_logits_after_samplers(api):
    """The seed document's example: use_samplers with top_k 3 leaves three candidates summing to 1."""
    result = post(api, "/v1/internal/logits", {"prompt": "Who is best, Asuka or Rei? Answer:", "use_samplers": True,
                                               "top_k": 3}).json()  # fmt: skip
    assert len(result["top_tokens"]) == 3
    assert math.isclose(sum(t["probability"] for t in result["top_tokens"]), 1.0, rel_tol=1e-5)
