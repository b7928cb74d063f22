"""POST /v1/chat/completions through the official OpenAI client and raw HTTP, checked against OpenAI's spec."""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time

import pytest
import requests

import openai_spec

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say something."}]
needs_spec = pytest.mark.skipif(not openai_spec.available(), reason="../shared/openai-openapi.yaml not present")


@pytest.fixture(scope="module")
def client(api):
    from openai import OpenAI

    return OpenAI(base_url=api.url("/v1"), api_key="unused", max_retries=0)


def post(api, body, **kwargs):
    return requests.post(api.url("/v1/chat/completions"), json=body, timeout=60, **kwargs)


def test_sdk_non_stream(client):
    from openai.types.chat import ChatCompletion

    result = client.chat.completions.create(model="tiny-llama", messages=MESSAGES, max_tokens=12, temperature=0)
    assert isinstance(result, ChatCompletion)
    choice = result.choices[0]
    assert choice.message.role == "assistant" and choice.message.refusal is None
    assert choice.finish_reason in ("stop", "length") and result.model == "tiny-llama"
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    assert 1 <= result.usage.completion_tokens <= 12 and result.system_fingerprint.startswith("fp_")


def test_sdk_stream_equals_non_stream(client):
    from openai.types.chat import ChatCompletionChunk

    kwargs = dict(model="tiny-llama", messages=MESSAGES, max_tokens=20, temperature=0)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_sdk_async_and_concurrent(api):
    from openai import AsyncOpenAI

    async def run():
        client = AsyncOpenAI(base_url=api.url("/v1"), api_key="x", max_retries=0)
        prompts = [f"Count to {i}" for i in range(6)]
        tasks = [
            client.chat.completions.create(
                model="tiny-llama", messages=[{"role": "user", "content": p}], max_tokens=10, temperature=0
            )
            for p in prompts
        ]
        together = await asyncio.gather(*tasks)
        alone = [
            await client.chat.completions.create(
                model="tiny-llama", messages=[{"role": "user", "content": p}], max_tokens=10, temperature=0
            )
            for p in prompts
        ]
        return [r.choices[0].message.content for r in together], [r.choices[0].message.content for r in alone]

    together, alone = asyncio.run(run())
    assert together == alone


def test_concurrent_streams_isolated(client):
    def run(i):
        stream = client.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": f"Story {i}"}], max_tokens=16,
            temperature=0, stream=True,
        )  # fmt: skip
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    solo = [run(i) for i in range(5)]
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        assert list(pool.map(run, range(5))) == solo


def test_n_choices_streaming(client):
    chunks = list(
        client.chat.completions.create(
            model="tiny-llama", messages=MESSAGES, max_tokens=8, n=3, seed=5, temperature=1.0, stream=True
        )
    )
    roles = [c.choices[0].index for c in chunks if c.choices and c.choices[0].delta.role == "assistant"]
    finishes = [c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason]
    assert sorted(roles) == [0, 1, 2] and sorted(finishes) == [0, 1, 2]


def test_seed_reproducible(client):
    kwargs = dict(model="tiny-llama", messages=MESSAGES, max_tokens=12, temperature=1.0, seed=42, n=2)
    a = [c.message.content for c in client.chat.completions.create(**kwargs).choices]
    b = [c.message.content for c in client.chat.completions.create(**kwargs).choices]
    assert a == b


def test_logprobs(client):
    result = client.chat.completions.create(
        model="tiny-llama", messages=MESSAGES, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    content = result.choices[0].logprobs.content
    assert len(content) == result.usage.completion_tokens == 6
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].token == t.token for t in content)
    raw = b"".join(bytes(t.bytes) for t in content)
    assert raw.decode("utf-8", errors="replace") == result.choices[0].message.content


def test_stop_and_max_completion_tokens(client):
    base = client.chat.completions.create(
        model="tiny-llama", messages=MESSAGES, max_completion_tokens=20, temperature=0, extra_body={"ignore_eos": True}
    ).choices[0]
    assert base.finish_reason == "length"
    stop = base.message.content[4:7]
    cut = client.chat.completions.create(
        model="tiny-llama", messages=MESSAGES, max_tokens=20, temperature=0, stop=[stop],
        extra_body={"ignore_eos": True},
    ).choices[0]  # fmt: skip
    assert cut.finish_reason == "stop" and cut.message.content == base.message.content[: base.message.content.find(stop)]


def test_template_is_reported(api):
    response = post(api, {"messages": MESSAGES, "max_tokens": 2})
    assert response.status_code == 200 and response.headers["X-Hearth-Template"].startswith("model")
    response = post(api, {"messages": MESSAGES, "max_tokens": 2, "instruction_template": "Alpaca"})
    assert response.headers["X-Hearth-Template"].startswith("Alpaca")
    prompt = requests.post(api.url("/v1/internal/chat-prompt"), json={"messages": MESSAGES}, timeout=30).json()
    assert prompt["prompt"].startswith("<s><|system|>\nYou are terse.<|end|>") and prompt["instruction_template"] == "model"


def test_text_generation_webui_extras(api):
    body = {"messages": [{"role": "user", "content": "Hello! Who are you?"}], "mode": "chat", "character": "Example",
            "max_tokens": 5, "user_name": "Bob"}  # fmt: skip
    prompt = requests.post(api.url("/v1/internal/chat-prompt"), json=body, timeout=30).json()["prompt"]
    assert "Bob: Hello! Who are you?" in prompt
    assert post(api, body).status_code == 200


def test_content_parts(api):
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
            "max_tokens": 2}  # fmt: skip
    prompt = requests.post(api.url("/v1/internal/chat-prompt"), json=body, timeout=30).json()["prompt"]
    assert "a\nb" in prompt
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    response = post(api, {"messages": [{"role": "user", "content": [image]}]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages[0].content[0]"


@needs_spec
def test_bodies_and_chunks_match_openai_spec(api):
    body = {"messages": MESSAGES, "max_tokens": 8, "logprobs": True, "top_logprobs": 2, "n": 2, "temperature": 0.7,
            "seed": 3}  # fmt: skip
    openai_spec.validate(post(api, body).json(), "CreateChatCompletionResponse")
    raw = post(api, {**body, "stream": True, "stream_options": {"include_usage": True}}).text
    chunks = openai_spec.stream_chunks(raw)
    for chunk in chunks:
        openai_spec.validate(chunk, "CreateChatCompletionStreamResponse")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


def test_raw_sse_framing(api):
    with post(api, {"messages": MESSAGES, "max_tokens": 4, "stream": True}, stream=True) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        raw = response.content.decode()
    assert raw.endswith("data: [DONE]\n\n")
    for block in raw.strip("\n").split("\n\n"):
        assert block.startswith("data: ") and "\n" not in block
    chunks = openai_spec.stream_chunks(raw)
    assert all("usage" not in c for c in chunks)  # only with stream_options.include_usage


def test_model_field_naming_unloaded_local_model_is_404(api):
    response = post(api, {"model": "tiny-gpt2", "messages": MESSAGES})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    assert post(api, {"model": "gpt-3.5-turbo", "messages": MESSAGES, "max_tokens": 2}).status_code == 200


def test_disconnect_mid_stream_cancels(api, api_runtime):
    import socket
    import time

    body = json.dumps({"messages": MESSAGES, "max_tokens": 400, "stream": True, "ignore_eos": True}).encode()
    sock = socket.create_connection(("127.0.0.1", api.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    )
    received = b""
    sock.settimeout(30)
    while b"data:" not in received:
        received += sock.recv(4096)
    sock.close()
    deadline = time.monotonic() + 10
    while api_runtime.scheduler.stats()["active"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert api_runtime.scheduler.stats()["active"] == 0
    assert post(api, {"messages": MESSAGES, "max_tokens": 2}).status_code == 200


def test_arrival_announcements_end_with_every_kind_of_request(api, api_runtime):
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    long = {**body, "max_tokens": 500, "ignore_eos": True, "stream": True}
    with requests.post(api.url("/v1/chat/completions"), json=long, stream=True) as r:
        next(r.iter_lines())
        assert api_runtime.scheduler.stats()["preparing"] == 0  # ended at submit, not with the response
    assert requests.post(api.url("/v1/completions"), json={"prompt": "Hi", "max_tokens": 2}).status_code == 200
    assert requests.post(api.url("/v1/chat/completions"), json={**body, "max_tokens": -1}).status_code == 400
    assert requests.post(api.url("/v1/chat/completions"), data="{not json").status_code == 400
    assert requests.get(api.url("/v1/models")).status_code == 200
    assert requests.get(api.url("/v1/nowhere")).status_code == 404
    deadline = time.monotonic() + 5
    while api_runtime.scheduler.stats()["preparing"] and time.monotonic() < deadline:
        time.sleep(0.01)  # a connection's announcement ends, at the latest, as its handler finishes
    assert api_runtime.scheduler.stats()["preparing"] == 0
