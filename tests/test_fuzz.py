"""Property-based fuzzing of Hearth's own API with schemathesis, from its /openapi.json, on a real tiny model.

Every documented operation gets generated bodies (valid and not); none may answer 5xx, every 4xx is OpenAI's error
shape, and the worker still answers afterwards. Admin operations (load, unload, stop) are left out: they would unload
the model the others need. A short budget here; a longer run: HEARTH_FUZZ_EXAMPLES=500 ./run_tests.sh tests/test_fuzz.py
"""
from __future__ import annotations

import os

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

EXAMPLES = int(os.environ.get("HEARTH_FUZZ_EXAMPLES", "25"))
ADMIN = ("/v1/internal/model/load", "/v1/internal/model/unload", "/v1/internal/stop-generation")


@pytest.fixture(scope="module")
def app(models_root):
    from conftest import make_runtime
    from extensions.openai.app import create_app

    runtime = make_runtime(models_root)
    runtime.models.load("tiny-llama")
    yield create_app(runtime)
    runtime.close()


def operations(app) -> list:
    """Every documented operation but the admin ones."""
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    ops = [result.ok() for result in schema.get_all_operations()]
    return [op for op in ops if not op.path.startswith(ADMIN)]


def test_no_operation_answers_5xx_and_every_error_is_shaped(app):
    import requests  # noqa: F401  (schemathesis' WSGI transport needs it installed)

    ops = operations(app)
    assert len(ops) >= 14
    for op in ops:
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=op.as_strategy())
        def check(case):
            response = case.call()
            assert response.status_code < 500, f"{op.label}: {response.status_code} for {case.body!r}: {response.text}"
            if response.status_code >= 400:
                error = response.json()["error"]
                assert isinstance(error["message"], str) and {"type", "param", "code"} <= set(error), response.text

        check()
    client = app.test_client()
    answer = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert answer.status_code == 200 and answer.json["choices"][0]["message"]["role"] == "assistant"
