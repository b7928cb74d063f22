"""WebSocket streaming: the same chunks as SSE, legacy text-generation-webui messages, auth, cancel on close."""
from __future__ import annotations

import json
import time

import pytest
import requests
from simple_websocket import Client

from conftest import LiveServer, with_server_settings

BODY = {"messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 16, "temperature": 0}


def ws_url(api, path):
    return api.base_url.replace("http://", "ws://") + path


def receive_until_done(ws) -> list:
    messages = []
    while True:
        message = ws.receive(timeout=60)
        if message == "[DONE]":
            return messages
        messages.append(json.loads(message))


def test_ws_chat_text_equals_sse_text(api):
    sse = requests.post(api.url("/v1/chat/completions"), json={**BODY, "stream": True}, timeout=60).text
    sse_text = "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content", "")
        for line in sse.splitlines() if line.startswith("data: {")
    )
    ws = Client.connect(ws_url(api, "/v1/ws/chat/completions"))
    try:
        ws.send(json.dumps(BODY))
        chunks = receive_until_done(ws)
        ws.send(json.dumps({**BODY, "max_tokens": 4}))  # a second request on the same socket
        second = receive_until_done(ws)
    finally:
        ws.close()
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == sse_text
    assert second[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_ws_completions_and_errors(api):
    ws = Client.connect(ws_url(api, "/v1/ws/completions"))
    try:
        ws.send(json.dumps({"prompt": "Once upon", "max_tokens": 5, "temperature": 0}))
        chunks = receive_until_done(ws)
        ws.send(json.dumps({"prompt": "x", "temperature": -3}))
        error = receive_until_done(ws)
        ws.send("{not json")
        bad_json = receive_until_done(ws)
    finally:
        ws.close()
    text = "".join(c["choices"][0]["text"] for c in chunks)
    whole = requests.post(api.url("/v1/completions"), json={"prompt": "Once upon", "max_tokens": 5, "temperature": 0},
                          timeout=60).json()  # fmt: skip
    assert text == whole["choices"][0]["text"]
    assert error[0]["error"]["param"] == "temperature" and "JSON" in bad_json[0]["error"]["message"]


def test_ws_needs_upgrade_and_key(api, api_runtime):
    plain = requests.get(api.url("/v1/ws/chat/completions"), timeout=10)
    assert plain.status_code == 400 and plain.json()["error"]["code"] == "upgrade_required"
    from extensions.openai.app import create_app

    keyed = LiveServer(create_app(with_server_settings(api_runtime, api_key="wskey")))
    try:
        with pytest.raises(Exception):
            Client.connect(ws_url(keyed, "/v1/ws/chat/completions"))
        ws = Client.connect(ws_url(keyed, "/v1/ws/chat/completions"), headers={"Authorization": "Bearer wskey"})
        ws.send(json.dumps({**BODY, "max_tokens": 2}))
        assert receive_until_done(ws)
        ws.close()
    finally:
        keyed.stop()


def test_closed_socket_cancels_generation(api, api_runtime):
    ws = Client.connect(ws_url(api, "/v1/ws/chat/completions"))
    ws.send(json.dumps({**BODY, "max_tokens": 400, "ignore_eos": True}))
    ws.receive(timeout=30)
    ws.close()
    deadline = time.monotonic() + 10
    while api_runtime.scheduler.stats()["active"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert api_runtime.scheduler.stats()["active"] == 0


def test_legacy_stream(api):
    ws = Client.connect(ws_url(api, "/api/v1/stream"))
    try:
        ws.send(json.dumps({"prompt": "Once upon", "max_new_tokens": 5, "do_sample": False, "seed": -1}))
        events = []
        while not events or events[-1]["event"] != "stream_end":
            events.append(json.loads(ws.receive(timeout=60)))
    finally:
        ws.close()
    text = "".join(e["text"] for e in events if e["event"] == "text_stream")
    whole = requests.post(api.url("/v1/completions"), json={"prompt": "Once upon", "max_tokens": 5, "temperature": 0},
                          timeout=60).json()  # fmt: skip
    assert text == whole["choices"][0]["text"]
    assert [e["message_num"] for e in events[:-1]] == list(range(len(events) - 1))


def test_legacy_chat_stream_history(api):
    history = {"internal": [["<|BEGIN-VISIBLE-CHAT|>", "Hello there!"]], "visible": [["", "Hello there!"]]}
    ws = Client.connect(ws_url(api, "/api/v1/chat-stream"))
    try:
        ws.send(json.dumps({"user_input": "Who are you?", "history": history, "mode": "chat", "character": "Example",
                            "max_new_tokens": 6, "do_sample": False}))  # fmt: skip
        events = []
        while not events or events[-1]["event"] != "stream_end":
            events.append(json.loads(ws.receive(timeout=60)))
    finally:
        ws.close()
    final = [e for e in events if e["event"] == "text_stream"][-1]["history"]["internal"]
    assert final[0] == ["<|BEGIN-VISIBLE-CHAT|>", "Hello there!"] and final[1][0] == "Who are you?"
    assert isinstance(final[1][1], str)
