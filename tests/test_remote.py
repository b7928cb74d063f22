"""API models (`device: api`): proxying a real upstream (another Hearth), fallback on each fault mode, upstream
pools with cool-downs, the token kept to its upstream, and embeddings."""
from __future__ import annotations

import json
import logging
import time

import pytest
import requests

from conftest import ROOT, LiveServer
from fault_upstream import FaultUpstream

TOKEN_ENV = "HEARTH_TEST_UPSTREAM_TOKEN"
TOKEN = "sk-upstream-secret-4242"
CLIENT_KEY = "client-key-77"
MESSAGES = [{"role": "user", "content": "hello there"}]


def front_server(models_root, models: dict, **extra):
    """A Hearth whose serving file holds `models`; returns (server, runtime)."""
    from extensions.openai.app import create_app
    from modules.config import load_settings
    from modules.runtime import build_runtime
    from modules.serving import parse_serving

    overrides = {"model.model_dir": str(models_root), "model.threads": 2, **extra.pop("overrides", {})}
    runtime = build_runtime(load_settings(None, overrides, root=ROOT), parse_serving({"models": models, **extra}))
    runtime.pool.load_all()
    return LiveServer(create_app(runtime, {"keepalive": 1})), runtime


def chat(server, model, stream=False, headers=None, **body):
    payload = {"model": model, "messages": MESSAGES, "max_tokens": 8, "temperature": 0, "stream": stream, **body}
    return requests.post(server.url("/v1/chat/completions"), json=payload, headers=headers, stream=stream, timeout=60)


def sse(response) -> list:
    """The events of an SSE response: dicts, and "[DONE]"."""
    events = []
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("data: "):
            data = line[6:]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def streamed_text(events) -> str:
    return "".join((c["choices"][0]["delta"].get("content") or "") for c in events
                   if isinstance(c, dict) and c.get("choices"))  # fmt: skip


@pytest.fixture(scope="module")
def upstreams():
    made = {name: FaultUpstream(name) for name in ("main", "backup", "peer")}
    yield made
    for upstream in made.values():
        upstream.close()


@pytest.fixture(autouse=True)
def reset(upstreams, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    for upstream in upstreams.values():
        upstream.mode, upstream.calls[:], upstream.hang_s = "ok", [], 30.0


@pytest.fixture(scope="module")
def hearth_upstream(api):
    """Another Hearth (the shared tiny-llama API server) as a real OpenAI-compatible upstream."""
    return api


@pytest.fixture(scope="module")
def front(models_root, upstreams, hearth_upstream):
    import os

    os.environ[TOKEN_ENV] = TOKEN  # the serving file is checked at start: the env var must be set by then
    models = {
        "cloud": {"device": "api", "base_url": hearth_upstream.base_url + "/v1", "upstream_model": "tiny-llama"},
        "flaky": {"device": "api", "base_url": upstreams["main"].base_url, "api_key_env": TOKEN_ENV, "timeout": 1,
                  "cooldown": 0, "fallback": ["backup"]},
        "backup": {"device": "api", "base_url": upstreams["backup"].base_url, "cooldown": 0},
        "to-local": {"device": "api", "base_url": upstreams["peer"].base_url, "cooldown": 0, "fallback": ["local"]},
        "alone": {"device": "api", "base_url": upstreams["peer"].base_url, "cooldown": 0},
        "local": {"model": "tiny-gpt2"},
    }
    server, runtime = front_server(models_root, models, default="local")
    yield server
    server.stop()
    runtime.close()


@pytest.mark.parametrize("stream", [False, True])
def test_chat_through_api_model_equals_asking_the_upstream(front, hearth_upstream, stream):
    direct = chat(hearth_upstream, "tiny-llama")
    assert direct.status_code == 200
    via = chat(front, "cloud", stream=stream)
    assert via.status_code == 200 and via.headers["X-Hearth-Model"] == "cloud"
    if stream:
        events = sse(via)
        assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] in ("stop", "length")
        text = streamed_text(events)
    else:
        body = via.json()
        assert body["model"] == "cloud" and body["usage"]["completion_tokens"] > 0
        text = body["choices"][0]["message"]["content"]
    assert text == direct.json()["choices"][0]["message"]["content"] and text


@pytest.mark.parametrize("stream", [False, True])
def test_completion_through_api_model_equals_asking_the_upstream(front, hearth_upstream, stream):
    body = {"prompt": "the cat sat", "max_tokens": 6, "temperature": 0}
    direct = requests.post(hearth_upstream.url("/v1/completions"), json={"model": "x", **body}, timeout=60).json()
    via = requests.post(front.url("/v1/completions"), json={"model": "cloud", "stream": stream, **body},
                        stream=stream, timeout=60)  # fmt: skip
    assert via.status_code == 200 and via.headers["X-Hearth-Model"] == "cloud"
    if stream:
        text = "".join(c["choices"][0]["text"] for c in sse(via) if isinstance(c, dict) and c["choices"])
    else:
        text = via.json()["choices"][0]["text"]
    assert text == direct["choices"][0]["text"]


def test_upstream_sees_its_token_never_the_clients(front, upstreams, caplog):
    caplog.set_level(logging.DEBUG)
    response = chat(front, "flaky", headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == upstreams["main"].text
    seen = upstreams["main"].calls[-1]["headers"]
    assert seen["Authorization"] == f"Bearer {TOKEN}"
    assert CLIENT_KEY not in json.dumps(upstreams["main"].calls[-1])
    upstreams["main"].mode = "500"
    failed = chat(front, "flaky")  # falls back: backup never sees a token (it has none configured)
    assert "Authorization" not in upstreams["backup"].calls[-1]["headers"]
    assert TOKEN not in failed.text and TOKEN not in caplog.text
    assert TOKEN not in requests.get(front.url("/v1/internal/health"), timeout=10).text


@pytest.mark.parametrize("mode", ["429", "500", "hang", "role-then-hang", "error-event"])
@pytest.mark.parametrize("stream", [False, True])
def test_failure_before_content_falls_back(front, upstreams, mode, stream):
    upstreams["main"].mode, upstreams["main"].hang_s = mode, 3.0
    response = chat(front, "flaky", stream=stream)
    assert response.status_code == 200 and response.headers["X-Hearth-Model"] == "backup"
    text = streamed_text(sse(response)) if stream else response.json()["choices"][0]["message"]["content"]
    assert text == upstreams["backup"].text
    assert upstreams["main"].calls and upstreams["backup"].calls


def test_api_model_falls_back_to_a_local_model(front, upstreams):
    upstreams["peer"].mode = "429"
    response = chat(front, "to-local")
    assert response.status_code == 200 and response.headers["X-Hearth-Model"] == "local"
    assert response.json()["model"] == "local" and response.json()["choices"][0]["message"]["content"]


def test_client_mistake_is_passed_back_without_fallback(front, upstreams):
    upstreams["main"].mode = "400"
    response = chat(front, "flaky")
    assert response.status_code == 400
    error = response.json()["error"]
    assert "max_tokens is too large" in error["message"] and error["param"] == "max_tokens"
    assert not upstreams["backup"].calls


@pytest.mark.parametrize("mode, status", [("500", 502), ("429", 503)])
def test_all_down_is_a_shaped_502_or_503(front, upstreams, mode, status):
    upstreams["main"].mode = upstreams["backup"].mode = mode
    for stream in (False, True):
        response = chat(front, "flaky", stream=stream)
        assert response.status_code == status
        error = response.json()["error"]
        assert error["type"] == "server_error" and "flaky" in error["message"] and "backup" in error["message"]


def test_drop_mid_stream_ends_with_an_error_event(front, upstreams):
    upstreams["peer"].mode = "drop-after-2"
    events = sse(chat(front, "alone", stream=True))
    assert events[-1] == "[DONE]" and "error" in events[-2]
    assert streamed_text(events[:-2]) == "answer from"  # what had come, then the error; never a finish "stop"
    assert not any(c["choices"][0].get("finish_reason") for c in events[:-2] if c.get("choices"))
    response = chat(front, "alone")
    assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_broken"


def test_pool_members_share_traffic_and_a_dead_one_is_skipped(models_root, upstreams):
    dead = FaultUpstream("dead")
    dead_url = dead.base_url
    dead.close()  # nothing listens there any more
    models = {"pair": {"device": "api", "base_url": [upstreams["main"].base_url, upstreams["backup"].base_url]},
              "with-dead": {"device": "api", "base_url": [dead_url, upstreams["peer"].base_url], "cooldown": 30}}
    server, runtime = front_server(models_root, models)
    try:
        for _ in range(10):
            assert chat(server, "pair").status_code == 200
        assert upstreams["main"].calls and upstreams["backup"].calls
        answers = [chat(server, "with-dead") for _ in range(6)]
        assert all(r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == upstreams["peer"].text
                   for r in answers)  # fmt: skip
        entry = next(e for e in requests.get(server.url("/v1/internal/health"), timeout=10).json()["entries"]
                     if e["name"] == "with-dead")  # fmt: skip
        states = {m["state"] for m in entry["upstreams"]}
        assert states == {"ok", "cooling_down"}
        cooling = next(m for m in entry["upstreams"] if m["state"] == "cooling_down")
        assert 0 < cooling["cooldown_s"] <= 30 and cooling["last_error"]
    finally:
        server.stop()
        runtime.close()


def test_when_all_members_cool_down_the_first_to_recover_is_tried(models_root, upstreams):
    models = {"solo": {"device": "api", "base_url": upstreams["peer"].base_url, "cooldown": 60}}
    server, runtime = front_server(models_root, models)
    try:
        upstreams["peer"].mode = "500"
        assert chat(server, "solo").status_code == 502
        upstreams["peer"].mode = "ok"  # still cooling down for a minute, but the only member: tried, answers
        assert chat(server, "solo").status_code == 200
    finally:
        server.stop()
        runtime.close()


def test_embeddings_through_an_api_model(front, upstreams):
    response = requests.post(front.url("/v1/embeddings"), json={"model": "flaky", "input": ["ab", "abcd"]},
                             timeout=30)  # fmt: skip
    assert response.status_code == 200, response.text
    body = response.json()
    assert [d["embedding"][0] for d in body["data"]] == [2.0, 4.0] and body["model"] == "flaky"
    assert upstreams["main"].calls[-1]["headers"]["Authorization"] == f"Bearer {TOKEN}"


def test_what_an_api_model_cannot_honour_is_a_400(front):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    for body, param in (({"logprobs": True}, "logprobs"), ({"instruction_template": "ChatML"}, "instruction_template"),
                        ({"response_format": {"type": "json_object"}}, "response_format"),
                        ({"tools": tools}, "tools")):  # not enforced by an API model: refused, never ignored
        response = chat(front, "alone", **body)
        assert response.status_code == 400 and response.json()["error"]["param"] == param
    response = requests.post(front.url("/v1/completions"), json={"model": "alone", "prompt": [1, 2, 3]}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == "prompt"


def test_models_list_and_info_show_api_entries(front):
    listed = {m["id"]: m for m in requests.get(front.url("/v1/models"), timeout=10).json()["data"]}
    assert listed["cloud"]["owned_by"] == "api" and listed["local"]["loaded"]
    info = requests.get(front.url("/v1/internal/model/info"), timeout=10).json()
    assert {e["name"] for e in info["entries"]} >= {"cloud", "flaky", "local"}
    response = requests.post(front.url("/v1/internal/model/unload"), json={"name": "cloud"}, timeout=10)
    assert response.status_code == 400 and response.json()["error"]["param"] == "name"


@pytest.mark.parametrize("models, fragment", [
    ({"a": {"device": "api"}}, "base_url"),
    ({"a": {"device": "api", "base_url": "ftp://x"}}, "base_url"),
    ({"a": {"device": "api", "base_url": "http://x/v1", "api_key_env": "HEARTH_NO_SUCH_VAR"}}, "HEARTH_NO_SUCH_VAR"),
    ({"a": {"device": "api", "base_url": "http://x/v1", "token": "sk-1"}}, "token"),
    ({"a": {"device": "gpu", "model": "m"}}, "device"),
    ({"a": {"model": "m", "fallback": ["nope"]}}, "nope"),
    ({"a": {"model": "m"}, "s": {"split": {"a": 1, "zz": 1}}}, "zz"),
    ({"a": {"model": "m"}, "s": {"split": {"a": 1}}}, "at least two"),
    ({"a": {"model": "m"}, "b": {"model": "m"}, "s": {"split": {"a": 1, "b": -1}}}, "positive"),
])
def test_bad_api_entries_name_the_problem(models, fragment):
    from modules.errors import SettingsError
    from modules.serving import parse_serving

    with pytest.raises(SettingsError) as err:
        parse_serving({"models": models})
    assert fragment in err.value.message



@pytest.fixture(scope="module")
def transformers_upstream(llama_dir):
    """`transformers serve` (a real OpenAI-compatible server from transformers) on the tiny Llama."""
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    from servers import start_transformers_serve

    process, url = start_transformers_serve(llama_dir, threads=1)
    yield url
    process.stop()


@pytest.mark.slow
def test_transformers_serve_as_upstream_streams_valid_openai(models_root, llama_dir, transformers_upstream):
    import openai_spec

    pinned = str(llama_dir)  # transformers serve answers only for the model it was started with
    models = {"hf": {"device": "api", "base_url": transformers_upstream, "upstream_model": pinned}}
    server, runtime = front_server(models_root, models)
    try:
        body = {"messages": MESSAGES, "max_tokens": 6, "temperature": 0}
        direct = requests.post(transformers_upstream + "/chat/completions", json={"model": pinned, **body},
                               timeout=120).json()["choices"][0]["message"]["content"]  # fmt: skip
        whole = chat(server, "hf", max_tokens=6)
        assert whole.status_code == 200 and whole.json()["choices"][0]["message"]["content"] == direct
        if openai_spec.available():
            openai_spec.validate(whole.json(), "CreateChatCompletionResponse")
        streamed = chat(server, "hf", stream=True, max_tokens=6, stream_options={"include_usage": True})
        chunks = openai_spec.stream_chunks(streamed.text)
        assert "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"]) == direct
        assert chunks[-1]["usage"]["completion_tokens"] > 0
        if openai_spec.available():
            for chunk in chunks:
                openai_spec.validate(chunk, "CreateChatCompletionStreamResponse")
        completion = requests.post(server.url("/v1/completions"), json={"model": "hf", "prompt": "the cat",
                                   "max_tokens": 4, "temperature": 0}, timeout=120)  # fmt: skip
        assert completion.status_code == 200 and completion.json()["choices"][0]["text"]
    finally:
        server.stop()
        runtime.close()


def test_official_sdk_streams_through_an_api_model(front, upstreams):
    from openai import OpenAI

    client = OpenAI(base_url=front.url("/v1"), api_key="anything")
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="flaky", messages=MESSAGES, stream=True) if c.choices]  # fmt: skip
    assert "".join(pieces) == upstreams["main"].text
    upstreams["main"].mode = "429"
    reply = client.chat.completions.create(model="flaky", messages=MESSAGES)
    assert reply.model == "backup" and reply.choices[0].message.content == upstreams["backup"].text


def test_device_api_shorthand_on_the_command_line(models_root, hearth_upstream):
    import subprocess
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    from servers import Process, free_port

    argv = [sys.executable, "-u", str(ROOT / "server.py"), "--model-dir", str(models_root), "--nowebui", "--api",
            "--api-port", str(free_port()), "--device", "api", "--api-base", hearth_upstream.base_url + "/v1",
            "--model", "tiny-llama"]  # fmt: skip
    process = Process(argv)
    try:
        url = process.wait_for(r"OpenAI-compatible API URL: (\S+)", timeout=120).group(1)
        via = requests.post(url + "/chat/completions", json={"messages": MESSAGES, "max_tokens": 5, "temperature": 0},
                            timeout=60)  # fmt: skip
        direct = chat(hearth_upstream, "tiny-llama", max_tokens=5)
        assert via.headers["X-Hearth-Model"] == "tiny-llama"
        assert via.json()["choices"][0]["message"]["content"] == direct.json()["choices"][0]["message"]["content"]
    finally:
        process.stop()
    bad = subprocess.run(argv[:-2] + ["--api-base", "http://x/v1"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--device api needs --model" in bad.stderr and "Traceback" not in bad.stderr


def test_websocket_route_streams_an_api_model(front, upstreams):
    from simple_websocket import Client

    ws = Client.connect(front.base_url.replace("http://", "ws://") + "/v1/ws/chat/completions")
    try:
        ws.send(json.dumps({"model": "flaky", "messages": MESSAGES}))
        chunks = []
        while (message := ws.receive(timeout=30)) != "[DONE]":
            chunks.append(json.loads(message))
    finally:
        ws.close()
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == upstreams["main"].text


def test_upstream_deviations_still_give_valid_openai(front, upstreams):
    import openai_spec

    upstreams["peer"].mode = "sloppy"
    whole = chat(front, "alone")
    assert whole.status_code == 200 and whole.json()["choices"][0]["message"]["content"] == upstreams["peer"].text
    assert whole.json()["choices"][0]["finish_reason"] == "stop"
    streamed = chat(front, "alone", stream=True, stream_options={"include_usage": True})
    chunks = openai_spec.stream_chunks(streamed.text)  # ends with exactly one [DONE] though the upstream sent none
    assert streamed_text(chunks) == upstreams["peer"].text
    if openai_spec.available():
        openai_spec.validate(whole.json(), "CreateChatCompletionResponse")
        for chunk in chunks:
            openai_spec.validate(chunk, "CreateChatCompletionStreamResponse")


def test_a_cooled_member_is_tried_again_after_its_cool_down(models_root, upstreams):
    models = {"pair": {"device": "api", "base_url": [upstreams["main"].base_url, upstreams["backup"].base_url],
                       "cooldown": 1}}  # fmt: skip
    server, runtime = front_server(models_root, models)
    try:
        upstreams["main"].mode = "500"
        answers = [chat(server, "pair") for _ in range(4)]
        assert all(r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "answer from backup"
                   for r in answers)  # fmt: skip
        calls = len(upstreams["main"].calls)
        assert calls == 1  # failed once, then skipped while cooling down
        upstreams["main"].mode = "ok"
        time.sleep(1.2)
        texts = {chat(server, "pair").json()["choices"][0]["message"]["content"] for _ in range(4)}
        assert "answer from main" in texts
    finally:
        server.stop()
        runtime.close()
