"""TitanML Takeoff's native endpoints (/generate, /generate_stream, /embed) against a live server, with the clients
of Takeoff's own docs as they are: seed 002's requests code (the Iris Takeoff client) and the takeoff-client package.

takeoff-client pins httpx==0.27.0, so it lives in its own sandbox (.clients/takeoff, installed by run_tests.sh) and
runs in a subprocess, as the legacy openai module does.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests

from conftest import LiveServer, with_server_settings
from test_api_clients import sandbox

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"
PROMPT = "The quick brown fox"

# Seed 002's two examples as its page gives them (the page's code is checked against these when it is present);
# only the URL differs.
SEED_STREAMING = '''
import requests

if __name__ == "__main__":
    
    input_text = 'List 3 things to do in London.'
    
    url = "http://localhost:8000/generate_stream"
    json = {"text":input_text}
     
    response = requests.post(url, json=json, stream=True)
    response.encoding = 'utf-8'
    
    for text in response.iter_content(chunk_size=1, decode_unicode=True):
        if text:
            print(text, end="", flush=True)
'''
SEED_NORMAL = '''
import requests

if __name__ == "__main__":
    
    input_text = 'List 3 things to do in London.'
    
    url = "http://localhost:8000/generate"
    json = {"text":input_text}
     
    response = requests.post(url, json=json)

    if "message" in response.json():
        print(response.json()["message"])
'''


def post(server, path: str, body: dict, **kwargs) -> requests.Response:
    return requests.post(server.url(path), json=body, timeout=60, **kwargs)


def generate(server, body: dict) -> dict:
    response = post(server, "/generate", body)
    assert response.status_code == 200, response.text
    return response.json()


def completion(api, prompt, **extra) -> dict:
    body = {"prompt": prompt, "temperature": 0, **extra}
    response = post(api, "/v1/completions", body)
    assert response.status_code == 200, response.text
    return response.json()


def run_python(code: str, pythonpath: Path | None = None) -> str:
    env = {**os.environ, **({"PYTHONPATH": str(pythonpath)} if pythonpath else {})}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_greedy_generate_equals_completions_and_answers_text_and_message(api):
    body = generate(api, {"text": PROMPT, "max_new_tokens": 12})  # Takeoff's defaults: sampling_topk 1 is greedy
    expected = completion(api, PROMPT, max_tokens=12)["choices"][0]["text"]
    assert body == {"text": expected, "message": expected}
    assert generate(api, {"text": PROMPT, "max_new_tokens": 12, "sampling_temperature": 0.7})["text"] == expected


def test_list_in_list_out_and_nulls_mean_defaults(api):
    nulls = {name: None for name in (
        "sampling_temperature", "sampling_topp", "sampling_topk", "repetition_penalty", "no_repeat_ngram_size",
        "min_new_tokens", "regex_string", "json_schema", "constrained_decoding_backend", "return_metadata",
        "prompt_max_tokens", "use_chat_template", "lora_id")}  # fmt: skip
    prompts = [PROMPT, "Numbers: 1, 2, 3,"]
    body = generate(api, {"text": prompts, "consumer_group": "primary", "max_new_tokens": 8, **nulls})
    expected = [completion(api, p, max_tokens=8)["choices"][0]["text"] for p in prompts]
    assert body["text"] == body["message"] == expected
    one = generate(api, {"text": [PROMPT], "max_new_tokens": 8})
    assert one["text"] == [expected[0]]


def test_default_max_new_tokens_is_128_and_metadata(api):
    body = generate(api, {"text": PROMPT, "min_new_tokens": 128, "return_metadata": True})
    meta = body["metadata"]
    assert meta["output_tokens"] == 128 and meta["finish_reason"] == "length"
    assert meta["input_tokens"] == completion(api, PROMPT, max_tokens=1)["usage"]["prompt_tokens"]
    listed = generate(api, {"text": [PROMPT, "Hi"], "max_new_tokens": 3, "min_new_tokens": 3, "return_metadata": True})
    assert [m["output_tokens"] for m in listed["metadata"]] == [3, 3]


def test_seed_002_clients_print_the_answer(api):
    for code in (SEED_STREAMING, SEED_NORMAL):
        page = next(iter(sorted(SEEDS.glob("002_*"))), None)
        if page is not None:
            assert code.strip() in page.read_text(), "the seed's example changed"
    answer = generate(api, {"text": "List 3 things to do in London."})["text"]
    assert answer
    streamed = run_python(SEED_STREAMING.replace("http://localhost:8000", api.base_url))
    assert streamed == answer
    printed = run_python(SEED_NORMAL.replace("http://localhost:8000", api.base_url))
    assert printed == answer + "\n"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_seed_002_curl_streams_plain_text(api):
    out = subprocess.run(["curl", "-s", "-X", "POST", api.url("/generate_stream"), "-N", "-H",
                          "Content-Type: application/json", "-d", '{"text":"List 3 things to do in London"}'],
                         capture_output=True, text=True, timeout=60, check=True).stdout  # fmt: skip
    assert out == generate(api, {"text": "List 3 things to do in London"})["text"]


def test_takeoff_client_generates_streams_and_embeds(api):
    path = sandbox("takeoff")
    code = textwrap.dedent(f"""
        import json
        from takeoff_client import TakeoffClient
        client = TakeoffClient(base_url="http://127.0.0.1", port={api.port}, oai_port={api.port})
        whole = client.generate("{PROMPT}", max_new_tokens=20)
        events = list(client.generate_stream("{PROMPT}", max_new_tokens=20, return_metadata=True))
        texts = client.generate(["{PROMPT}", "Hello"], max_new_tokens=5)
        embedded = client.embed(["a cat", "a dog"])
        print(json.dumps({{"whole": whole, "events": [[e.event, e.data] for e in events], "texts": texts,
                          "dims": [len(d["embedding"]) for d in embedded["data"]]}}))
    """)  # fmt: skip
    out = json.loads(run_python(code, path))
    expected = completion(api, PROMPT, max_tokens=20)["choices"][0]["text"]
    assert out["whole"]["text"] == expected
    *tokens, (kind, meta) = out["events"]
    assert all(event == "message" for event, _ in tokens) and len(tokens) > 1
    assert "".join(data for _, data in tokens) == expected  # spaces and newlines inside tokens survive
    assert kind == "metadata" and json.loads(meta)["output_tokens"] == completion(api, PROMPT, max_tokens=20)[
        "usage"]["completion_tokens"]  # fmt: skip
    assert out["texts"]["text"][0] == completion(api, PROMPT, max_tokens=5)["choices"][0]["text"]
    assert out["dims"] == [384, 384]


def test_stream_format_follows_accept_then_body(api):
    def stream(body, accept=None):
        headers = {"Accept": accept} if accept else {}
        response = post(api, "/generate_stream", body, headers=headers, stream=True)
        return response.headers["Content-Type"].split(";")[0], response.text

    plain = {"text": PROMPT, "max_new_tokens": 6}
    expected = generate(api, plain)["text"]
    assert stream({"text": PROMPT}, None)[0] == "text/plain"  # seed 002's body, Accept */*
    kind, raw = stream(plain, None)  # today's Takeoff fields: events
    assert kind == "text/event-stream" and sse_text(raw) == expected
    assert stream(plain, "text/plain") == ("text/plain", expected)
    kind, raw = stream({"text": PROMPT}, "text/event-stream")
    assert kind == "text/event-stream" and raw.startswith("data: ")


def sse_text(raw: str) -> str:
    """The text of message events, parsed as the SSE spec says (data lines joined by newlines)."""
    texts = []
    for block in raw.split("\n\n"):
        lines = block.split("\n")
        if block and not any(line.startswith("event:") for line in lines):
            texts.append("\n".join(line[6:] for line in lines if line.startswith("data: ")))
    return "".join(texts)


def test_text_events_keep_newlines_and_spaces():
    import sseclient

    from extensions.openai.sse import text_event

    for text in (" hello", "a\nb", "\n", "x\r\ny\rz", "  \n\n "):
        parsed = list(sseclient.SSEClient(iter([text_event(text).encode()])).events())
        assert [e.data for e in parsed] == [text.replace("\r\n", "\n").replace("\r", "\n")]


def test_mid_stream_error_ends_events_with_an_error_event():
    from extensions.openai.sse import guarded
    from extensions.openai.takeoff import TakeoffRun, _error_event, _events
    from modules.errors import GenerationFailed
    from modules.generation import Delta

    class Failing:
        def events(self, idle=None):
            yield Delta(0, "one")
            raise GenerationFailed("the model raised")

        def cancel(self):
            self.cancelled = True

    handle = Failing()
    run = TakeoffRun("m", [handle], single=True, metadata=False)
    out = list(guarded(_events(run, 1.0), run.cancel, _error_event))
    assert out[0] == "data: one\n\n" and out[-1].startswith("event: error\ndata: {")
    assert json.loads(out[-1].split("data: ", 1)[1])["error"]["message"] == "the model raised"
    assert handle.cancelled


def test_disconnect_cancels_both_stream_formats(api, api_runtime):
    for accept, marker in (("text/event-stream", b"data:"), ("text/plain", b"\r\n\r\n")):
        body = json.dumps({"text": PROMPT, "max_new_tokens": 400, "min_new_tokens": 400}).encode()
        sock = socket.create_connection(("127.0.0.1", api.port))
        sock.sendall(b"POST /generate_stream HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     + f"Accept: {accept}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
        received = b""
        sock.settimeout(30)
        while marker not in received or len(received.split(b"\r\n\r\n", 1)[1]) < 4:
            received += sock.recv(4096)
        sock.close()
        deadline = time.monotonic() + 10
        while api_runtime.scheduler.stats()["active"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert api_runtime.scheduler.stats()["active"] == 0, accept


def test_use_chat_template_equals_chat_completions(api):
    def chat(content: str) -> str:
        body = {"messages": [{"role": "user", "content": content}], "mode": "instruct", "temperature": 0,
                "max_tokens": 10}  # fmt: skip
        return post(api, "/v1/chat/completions", body).json()["choices"][0]["message"]["content"]

    body = generate(api, {"text": "Hello there", "use_chat_template": True, "max_new_tokens": 10})
    assert body["text"] == chat("Hello there")
    listed = generate(api, {"text": ["Hello there", "Hi"], "use_chat_template": True, "max_new_tokens": 10})
    assert listed["text"] == [chat("Hello there"), chat("Hi")]


def test_prompt_max_tokens_keeps_the_last_tokens(api, api_runtime):
    loader = api_runtime.models.loader
    long = "one two three four five six seven eight nine ten eleven twelve"
    ids = loader.encode(long, add_special_tokens=True)
    bos = loader.encode("", add_special_tokens=True)
    assert ids[: len(bos)] == bos and len(ids) - len(bos) > 5
    body = generate(api, {"text": long, "prompt_max_tokens": 5, "max_new_tokens": 8, "return_metadata": True})
    truncated = bos + ids[-5:]
    assert body["text"] == completion(api, truncated, max_tokens=8)["choices"][0]["text"]
    assert body["metadata"]["input_tokens"] == len(truncated)
    short = generate(api, {"text": long, "prompt_max_tokens": 500, "max_new_tokens": 8})
    assert short["text"] == completion(api, long, max_tokens=8)["choices"][0]["text"]
    chat = generate(api, {"text": long, "prompt_max_tokens": 5, "use_chat_template": True, "max_new_tokens": 8})
    tail = loader.decode(ids[-5:], skip_special_tokens=False)  # the message's last 5 tokens; the template's not counted
    assert chat["text"] == generate(api, {"text": tail, "use_chat_template": True, "max_new_tokens": 8})["text"]


def test_no_repeat_ngram_size_is_enforced(api, api_runtime):
    from modules.engine.base import CompletionRequest, OutputOptions, SamplerValues

    engine = api_runtime.pool.default.engine
    prompt = "x x x x x x"
    context = api_runtime.models.loader.encode(prompt, add_special_tokens=True)

    def tokens(n: int) -> list[int]:
        request = CompletionRequest((prompt,), sampling=SamplerValues(top_k=1, no_repeat_ngram_size=n),
                                    output=OutputOptions(max_tokens=60, min_tokens=60))  # fmt: skip
        return list(engine.complete(request).handles[0].result().choices[0].token_ids)

    assert repeats(context, tokens(0), 3)  # greedy decoding of the tiny model repeats itself
    for n in (1, 2, 3):
        assert not repeats(context, tokens(n), n), n
    body = {"text": prompt, "max_new_tokens": 60, "min_new_tokens": 60}
    assert generate(api, {**body, "no_repeat_ngram_size": 3})["text"] != generate(api, body)["text"]


def repeats(prompt: list[int], output: list[int], n: int) -> bool:
    """True when an n-gram with output tokens in it already occurred earlier in prompt + output."""
    ids, seen = prompt + output, set()
    for i in range(len(ids) - n + 1):
        gram = tuple(ids[i : i + n])
        if gram in seen and i + n > len(prompt):
            return True
        seen.add(gram)
    return False


@pytest.mark.parametrize("field, value", [
    ("sampling_temperature", -1), ("sampling_topp", 0), ("sampling_topk", 1.5), ("repetition_penalty", 0),
    ("no_repeat_ngram_size", -1), ("max_new_tokens", 0), ("min_new_tokens", 200), ("prompt_max_tokens", 0),
    ("lora_id", "my-lora"), ("regex_string", "[a-"), ("json_schema", {"type": "object", "uniqueItems": True,
    "properties": {"a": {"type": "array", "uniqueItems": True}}}), ("json_schema", "not json"), ("text", []),
    ("text", 5), ("sampling_temperature", "0.5"), ("return_metadata", "yes"),
])  # fmt: skip
def test_bad_fields_are_400_naming_them(api, field, value):
    for path in ("/generate", "/generate_stream"):
        response = post(api, path, {"text": PROMPT, field: value})
        assert response.status_code == 400, (path, field, response.text)
        assert response.json()["error"]["param"] == field, response.json()


def test_regex_string_and_json_schema_constrain_the_output(api):
    """The tiny random model writes noise unconstrained: valid output proves the constraint did it."""
    import re

    both = post(api, "/generate", {"text": [PROMPT, "hello"], "regex_string": "[0-9]{3}-[a-z]{2}",
                                   "json_schema": {"type": "object"}, "max_new_tokens": 20})  # fmt: skip
    assert both.status_code == 200, both.text
    assert all(re.fullmatch(r"[0-9]{3}-[a-z]{2}", text) for text in both.json()["text"])  # regex_string wins
    schema = {"type": "object", "properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"}},
              "required": ["n", "ok"], "additionalProperties": False}  # fmt: skip
    response = post(api, "/generate", {"text": PROMPT, "json_schema": schema, "max_new_tokens": 60})
    assert response.status_code == 200, response.text
    value = json.loads(response.json()["text"])
    assert set(value) == {"n", "ok"} and isinstance(value["n"], int) and isinstance(value["ok"], bool)
    streamed = post(api, "/generate_stream", {"text": PROMPT, "regex_string": "(yes|no)"}, stream=True,
                    headers={"Accept": "text/plain"})  # fmt: skip
    assert streamed.content.decode() in ("yes", "no")


def test_stream_takes_one_text(api):
    response = post(api, "/generate_stream", {"text": ["a", "b"]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "text"


def test_embed_matches_v1_embeddings(api):
    texts = ["a cat", "a dog"]
    listed = post(api, "/embed", {"text": texts, "consumer_group": "primary"}).json()["result"]
    single = post(api, "/embed", {"text": "a cat"}).json()["result"]
    reference = post(api, "/v1/embeddings", {"input": texts}).json()["data"]
    assert listed == [d["embedding"] for d in reference]
    assert single == reference[0]["embedding"]  # a string in: one vector out, as Takeoff answers
    empty = post(api, "/embed", {"text": []})
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "text"


def test_routes_are_documented_and_counted_as_generation(api):
    from extensions.openai.app import GENERATION_ENDPOINTS

    paths = requests.get(api.url("/openapi.json"), timeout=10).json()["paths"]
    for path, schema in (("/generate", "GenerateRequest"), ("/generate_stream", "GenerateRequest"),
                         ("/embed", "EmbedRequest")):  # fmt: skip
        ref = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith(schema) and paths[path]["post"]["tags"] == ["Takeoff"]
    assert {"takeoff.generate", "takeoff.generate_stream"} <= GENERATION_ENDPOINTS


def test_unknown_fields_and_keys_follow_the_other_routes(api, api_runtime):
    from extensions.openai.app import create_app

    assert generate(api, {"text": PROMPT, "max_new_tokens": 2, "frobnicate": 1})["text"] is not None
    strict = LiveServer(create_app(with_server_settings(api_runtime, strict_api=True)))
    keyed = LiveServer(create_app(with_server_settings(api_runtime, api_key="sk-user-123")))
    try:
        response = post(strict, "/generate", {"text": PROMPT, "frobnicate": 1})
        assert response.status_code == 400 and response.json()["error"]["param"] == "frobnicate"
        for path in ("/generate", "/generate_stream", "/embed"):
            body = {"text": PROMPT, "max_new_tokens": 2}
            assert post(keyed, path, body).status_code == 401
            assert post(keyed, path, body, headers={"Authorization": "Bearer sk-user-123"}).status_code == 200
    finally:
        strict.stop()
        keyed.stop()


def test_consumer_group_names_a_pool_entry(api):
    response = post(api, "/generate", {"text": PROMPT, "max_new_tokens": 2, "consumer_group": "tiny-gpt2"})
    assert response.status_code == 404 and response.json()["error"]["param"] == "consumer_group"
    assert re.search("not loaded", response.json()["error"]["message"])


def test_takeoff_routes_serve_an_api_model(api, models_root):
    """An API-model entry (`device: api`, here another Hearth and a fake upstream) answers Takeoff's routes too."""
    from fault_upstream import FaultUpstream
    from test_remote import front_server

    fake = FaultUpstream("embedder")
    models = {"cloud": {"device": "api", "base_url": api.base_url + "/v1", "upstream_model": "tiny-llama"},
              "embedder": {"device": "api", "base_url": fake.base_url}}  # fmt: skip
    front, runtime = front_server(models_root, models)
    try:
        body = {"text": PROMPT, "max_new_tokens": 8}
        direct = generate(api, body)["text"]
        assert generate(front, {**body, "consumer_group": "cloud"})["text"] == direct
        streamed = post(front, "/generate_stream", {**body, "consumer_group": "cloud"}, stream=True)
        assert streamed.headers["X-Hearth-Model"] == "cloud" and sse_text(streamed.text) == direct
        assert generate(front, {**body, "consumer_group": "primary"})["text"] == direct  # the default entry
        chat = {"text": "Hello there", "use_chat_template": True, "max_new_tokens": 8}
        assert generate(front, {**chat, "consumer_group": "cloud"})["text"] == generate(api, chat)["text"]
        refused = post(front, "/generate", {**body, "consumer_group": "cloud", "prompt_max_tokens": 2})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "prompt_max_tokens"
        for field, value in (("regex_string", "[0-9]+"), ("json_schema", {"type": "object"})):  # never unconstrained
            refused = post(front, "/generate", {**body, "consumer_group": "cloud", field: value})
            assert refused.status_code == 400 and refused.json()["error"]["param"] == field
        unknown = post(front, "/generate", {**body, "consumer_group": "nope"})
        assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "consumer_group"
        embedded = post(front, "/embed", {"text": ["ab", "abcd"], "consumer_group": "embedder"}).json()["result"]
        assert [vector[0] for vector in embedded] == [2.0, 4.0]
    finally:
        front.stop()
        runtime.close()
        fake.close()
