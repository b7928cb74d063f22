"""Bad input gets a 4xx in OpenAI's error shape naming the parameter; the server keeps answering."""
from __future__ import annotations

import json
import logging

import pytest
import requests

from conftest import LiveServer, with_server_settings

OK_MESSAGES = [{"role": "user", "content": "hi"}]


def chat(api, body=None, data=None, headers=None):
    kwargs = {"json": body} if data is None else {"data": data}
    return requests.post(api.url("/v1/chat/completions"), headers=headers, timeout=60, **kwargs)


def assert_error(response, status, param=None):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param, body
    assert "Traceback" not in response.text


BAD_CHAT = [
    ({"messages": "hi"}, "messages"),
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0]"),
    ({"messages": OK_MESSAGES, "temperature": "hot"}, "temperature"),
    ({"messages": OK_MESSAGES, "temperature": -1}, "temperature"),
    ({"messages": OK_MESSAGES, "temperature": True}, "temperature"),
    ({"messages": OK_MESSAGES, "top_p": 2}, "top_p"),
    ({"messages": OK_MESSAGES, "max_tokens": -5}, "max_tokens"),
    ({"messages": OK_MESSAGES, "max_tokens": 0}, "max_tokens"),
    ({"messages": OK_MESSAGES, "max_tokens": "5"}, "max_tokens"),
    ({"messages": OK_MESSAGES, "n": 0}, "n"),
    ({"messages": OK_MESSAGES, "n": 100000}, "n"),
    ({"messages": OK_MESSAGES, "presence_penalty": 3}, "presence_penalty"),
    ({"messages": OK_MESSAGES, "frequency_penalty": -2.5}, "frequency_penalty"),
    ({"messages": OK_MESSAGES, "logit_bias": {"abc": 1}}, "logit_bias"),
    ({"messages": OK_MESSAGES, "logit_bias": {"5": 500}}, "logit_bias"),
    ({"messages": OK_MESSAGES, "logit_bias": {"99999999": 1}}, "logit_bias"),
    ({"messages": OK_MESSAGES, "stop": 5}, "stop"),
    ({"messages": OK_MESSAGES, "stop": [""]}, "stop"),
    ({"messages": OK_MESSAGES, "stream": "yes"}, "stream"),
    ({"messages": OK_MESSAGES, "seed": 1.5}, "seed"),
    ({"messages": OK_MESSAGES, "top_logprobs": 2}, "top_logprobs"),
    ({"messages": OK_MESSAGES, "logprobs": True, "top_logprobs": 50}, "top_logprobs"),
    ({"messages": OK_MESSAGES, "response_format": {"type": "json_schema", "json_schema": {"schema": {"not": {}}}}},
     "response_format"),
    ({"messages": OK_MESSAGES, "response_format": {"type": "yaml"}}, "response_format"),
    ({"messages": OK_MESSAGES, "tool_choice": "required"}, "tool_choice"),
    ({"messages": OK_MESSAGES, "tool_choice": "sometimes"}, "tool_choice"),
    ({"messages": OK_MESSAGES, "mode": "poetry"}, "mode"),
    ({"messages": OK_MESSAGES, "instruction_template": "../../etc/passwd"}, "instruction_template"),
    ({"messages": OK_MESSAGES, "instruction_template": "NoSuchTemplate"}, "instruction_template"),
    ({"messages": OK_MESSAGES, "mode": "chat", "character": "../secret"}, "character"),
    ({"messages": OK_MESSAGES, "temperature": 50}, "temperature"),
    ({"messages": OK_MESSAGES, "temperature": 2.01}, "temperature"),
    ({"messages": OK_MESSAGES, "character": "Nope"}, "character"),  # instruct mode (the default) uses no character
    ({"messages": OK_MESSAGES, "mode": "instruct", "character": "Nope"}, "character"),
    ({"messages": OK_MESSAGES, "mode": "chat-instruct", "character": "Nope"}, "character"),
    ({"messages": OK_MESSAGES, "mode": "chat", "character": "Nope"}, "character"),
    ({"messages": OK_MESSAGES, "min_tokens": -1}, "min_tokens"),
    ({"messages": OK_MESSAGES, "top_k": -3}, "top_k"),
    ({"messages": OK_MESSAGES, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
]


@pytest.mark.parametrize("body, param", BAD_CHAT)
def test_bad_chat_input(api, body, param):
    assert_error(chat(api, body), 400, param)
    assert requests.get(api.url("/v1/internal/health"), timeout=10).status_code == 200


def test_hostile_template_string(api):
    body = {"messages": OK_MESSAGES, "instruction_template_str": "{{ ''.__class__.__mro__[1].__subclasses__() }}"}
    assert_error(chat(api, body), 400, "instruction_template_str")


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe{}", "UTF-8"),
        (b"[1, 2]", "JSON object"),
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', "not valid JSON"),
        (b"", "not valid JSON"),
    ],
)
def test_malformed_bodies(api, data, fragment):
    response = chat(api, data=data, headers={"Content-Type": "application/json"})
    assert_error(response, 400)
    assert fragment in response.json()["error"]["message"]


def test_huge_body_is_413(api):
    response = chat(api, data=b'{"x": "' + b"a" * (9 * 1024 * 1024) + b'"}', headers={"Content-Type": "application/json"})
    assert_error(response, 413)


def test_prompt_over_context_is_413(api):
    long_text = "word " * 3000
    response = chat(api, {"messages": [{"role": "user", "content": long_text}]})
    assert_error(response, 413)
    assert response.json()["error"]["code"] == "context_length_exceeded"
    response = requests.post(api.url("/v1/completions"), json={"prompt": long_text, "max_tokens": 2}, timeout=30)
    assert_error(response, 413, "prompt")
    assert response.json()["error"]["code"] == "context_length_exceeded"


def test_unknown_route_and_method(api):
    assert_error(requests.post(api.url("/v1/nothing-here"), json={}, timeout=10), 404)
    assert_error(requests.get(api.url("/v1/chat/completions"), timeout=10), 405)


def test_unknown_fields_ignored_unless_strict(api, api_runtime):
    assert chat(api, {"messages": OK_MESSAGES, "max_tokens": 2, "frobnicate": 1}).status_code == 200
    from extensions.openai.app import create_app

    strict = LiveServer(create_app(with_server_settings(api_runtime, strict_api=True)))
    try:
        assert_error(chat(strict, {"messages": OK_MESSAGES, "frobnicate": 1}), 400, "frobnicate")
    finally:
        strict.stop()


@pytest.fixture(scope="module")
def keyed(api_runtime):
    from extensions.openai.app import create_app

    server = LiveServer(create_app(with_server_settings(api_runtime, api_key="sk-user-123", admin_key="sk-admin-456")))
    yield server
    server.stop()


def test_api_key_on_every_route(keyed, caplog):
    caplog.set_level(logging.DEBUG)
    for path in ("/openapi.json", "/docs", "/docs/static/swagger-ui-bundle.js"):  # not secrets; the page's calls are
        assert requests.get(keyed.url(path), timeout=10).status_code == 200
    for path in ("/v1/models", "/v1/internal/health", "/docs/../v1/models"):
        assert_error(requests.get(keyed.url(path), timeout=10), 401)
        wrong = requests.get(keyed.url(path), headers={"Authorization": "Bearer nope"}, timeout=10)
        assert_error(wrong, 401)
        right = requests.get(keyed.url(path), headers={"Authorization": "Bearer sk-user-123"}, timeout=10)
        assert right.status_code == 200
    ok = chat(keyed, {"messages": OK_MESSAGES, "max_tokens": 2}, headers={"Authorization": "Bearer sk-user-123"})
    assert ok.status_code == 200
    assert "sk-user-123" not in caplog.text and "sk-admin-456" not in caplog.text


def test_openai_client_with_key(keyed):
    from openai import AuthenticationError, OpenAI

    good = OpenAI(base_url=keyed.url("/v1"), api_key="sk-user-123", max_retries=0)
    assert good.models.list().data
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=keyed.url("/v1"), api_key="bad", max_retries=0).models.list()


def test_host_header_check(api, api_runtime):
    evil = requests.get(api.url("/v1/models"), headers={"Host": "evil.example:5000"}, timeout=10)
    assert_error(evil, 400)
    for host in ("localhost:5000", "127.0.0.1", "[::1]:5000"):
        assert requests.get(api.url("/v1/models"), headers={"Host": host}, timeout=10).status_code == 200
    from extensions.openai.app import create_app

    listening = LiveServer(create_app(with_server_settings(api_runtime, listen=True)))
    try:
        response = requests.get(listening.url("/v1/models"), headers={"Host": "evil.example"}, timeout=10)
        assert response.status_code == 200
    finally:
        listening.stop()


def test_cors(api):
    preflight = requests.options(
        api.url("/v1/chat/completions"),
        headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"},
        timeout=10,
    )  # fmt: skip
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "http://app.example"
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"]
    simple = requests.get(api.url("/v1/models"), headers={"Origin": "http://app.example"}, timeout=10)
    assert simple.headers["Access-Control-Allow-Origin"] == "http://app.example"


def test_error_inside_stream_is_an_event_then_done(api, api_runtime, monkeypatch):
    from modules.errors import GenerationFailed

    original = api_runtime.scheduler.submit

    def submit(request):
        handle = original(request)
        events = handle.events

        def failing(idle=None):
            for i, delta in enumerate(events(idle)):
                if i == 1:
                    raise GenerationFailed("simulated failure mid-stream")
                yield delta

        handle.events = failing
        return handle

    monkeypatch.setattr(api_runtime.scheduler, "submit", submit)
    raw = chat(api, {"messages": OK_MESSAGES, "max_tokens": 20, "stream": True, "ignore_eos": True}).text
    payloads = [line[6:] for line in raw.split("\n") if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    error = json.loads(payloads[-2])
    assert error["error"]["message"] == "simulated failure mid-stream" and error["error"]["code"] == "generation_failed"
