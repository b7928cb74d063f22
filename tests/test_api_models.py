"""GET /v1/models, /v1/models/{id}, the /v1/engines aliases, /openapi.json and /docs."""
from __future__ import annotations

import pytest
import requests

import openai_spec


def test_models_list_loaded_first(api):
    from openai import OpenAI

    models = OpenAI(base_url=api.url("/v1"), api_key="x", max_retries=0).models.list().data
    ids = [m.id for m in models]
    assert ids[0] == "tiny-llama" and "tiny-gpt2" in ids
    assert models[0].model_extra["loaded"] is True and all(not m.model_extra["loaded"] for m in models[1:])


def test_model_by_id_and_engines_alias(api):
    one = requests.get(api.url("/v1/models/tiny-gpt2"), timeout=10).json()
    assert one["id"] == "tiny-gpt2" and one["object"] == "model" and one["loaded"] is False
    assert requests.get(api.url("/v1/engines"), timeout=10).json()["data"][0]["id"] == "tiny-llama"
    assert requests.get(api.url("/v1/engines/tiny-llama"), timeout=10).json()["loaded"] is True
    missing = requests.get(api.url("/v1/models/gpt-4"), timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


@pytest.mark.skipif(not openai_spec.available(), reason="../shared/openai-openapi.yaml not present")
def test_models_match_openai_spec(api):
    openai_spec.validate(requests.get(api.url("/v1/models"), timeout=10).json(), "ListModelsResponse")
    openai_spec.validate(requests.get(api.url("/v1/models/tiny-llama"), timeout=10).json(), "Model")


def test_openapi_document_and_docs_page(api):
    doc = requests.get(api.url("/openapi.json"), timeout=10).json()
    assert doc["openapi"].startswith("3.1") and "/v1/chat/completions" in doc["paths"]
    chat_schema = doc["components"]["schemas"]["ChatCompletionRequest"]
    assert "messages" in chat_schema["properties"] and "messages" in chat_schema["required"]
    page = requests.get(api.url("/docs"), timeout=10)
    assert page.status_code == 200 and "swagger-ui-bundle.js" in page.text
    asset = requests.get(api.url("/docs/static/swagger-ui-bundle.js"), timeout=10)
    assert asset.status_code == 200 and len(asset.content) > 100_000


def test_openapi_describes_every_v1_route_of_the_app(api, api_runtime):
    """The document is read from the app's routes: every /v1 HTTP route and Takeoff's are in it, nothing else is."""
    import re

    from extensions.openai.app import create_app

    app = create_app(api_runtime)
    routes = {(re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule), method.lower())
              for rule in app.url_map.iter_rules()
              if (rule.rule.startswith("/v1/") or rule.endpoint.startswith("takeoff.")) and "/ws/" not in rule.rule
              for method in rule.methods - {"HEAD", "OPTIONS"}}  # fmt: skip
    doc = requests.get(api.url("/openapi.json"), timeout=10).json()
    assert {(path, method) for path, ops in doc["paths"].items() for method in ops} == routes
    load = doc["paths"]["/v1/internal/model/load"]["post"]
    assert load["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/LoadModelRequest")


def test_health(api):
    health = requests.get(api.url("/v1/internal/health"), timeout=10).json()
    assert health["status"] == "ok" and health["model"] == "tiny-llama" and health["active"] >= 0
