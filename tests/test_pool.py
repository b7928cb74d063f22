"""The model pool: a serving file with two tiny models served at once, routed by `model`, managed per entry."""
from __future__ import annotations

import threading
import time

import pytest
import requests

from conftest import ROOT, LiveServer, make_runtime, models_with_broken

PROMPTS = ["hello there", "count to three", "a b c d", "the cat sat"]
SERVING = {
    "models": {
        "primary": {"model": "tiny-llama", "version": "2"},
        "small": {"model": "tiny-gpt2", "max_batch_size": 4, "instruction_template": "ChatML"},
    },
    "default": "primary",
}


def chat(server, text=PROMPTS[0], model=None, max_tokens=8):
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "temperature": 0}
    if model is not None:
        body["model"] = model
    return requests.post(server.url("/v1/chat/completions"), json=body, timeout=120)


def pool_runtime(root, serving=SERVING, **overrides):
    from modules.config import load_settings
    from modules.runtime import build_runtime
    from modules.serving import parse_serving

    base = {"model.model_dir": str(root), "model.threads": 2, "model.max_batch_size": 8, **overrides}
    runtime = build_runtime(load_settings(None, base, root=ROOT), parse_serving(serving))
    runtime.pool.load_all()
    return runtime


@pytest.fixture(scope="module")
def pool_root(models_root, tmp_path_factory):
    return models_with_broken(models_root, tmp_path_factory.mktemp("pool-models"))


@pytest.fixture(scope="module")
def pool_api(pool_root):
    from extensions.openai.app import create_app

    runtime = pool_runtime(pool_root)
    server = LiveServer(create_app(runtime, {"keepalive": 1}))
    yield server
    server.stop()
    runtime.close()


@pytest.fixture
def fresh_pool(pool_root):
    """A pool server of its own, for tests that load and unload."""
    from extensions.openai.app import create_app

    runtime = pool_runtime(pool_root)
    server = LiveServer(create_app(runtime, {"keepalive": 1}))
    yield server, runtime
    server.stop()
    runtime.close()


@pytest.fixture(scope="module")
def single_answers(pool_root):
    """Greedy answers of a single-model server (today's --model X) for each tiny model and prompt."""
    from extensions.openai.app import create_app

    answers = {}
    for model in ("tiny-llama", "tiny-gpt2"):
        runtime = make_runtime(pool_root, **{"model.model": model})
        runtime.models.load(model, {"max_batch_size": 4} if model == "tiny-gpt2" else None,
                            {"instruction_template": "ChatML"} if model == "tiny-gpt2" else None)  # fmt: skip
        server = LiveServer(create_app(runtime))
        try:
            for text in PROMPTS:
                response = chat(server, text)
                assert response.status_code == 200 and response.json()["model"] == model
                answers[model, text] = response.json()["choices"][0]["message"]["content"]
        finally:
            server.stop()
            runtime.close()
    return answers


def test_both_entries_answer_as_single_model_servers(pool_api, single_answers):
    from openai import OpenAI

    client = OpenAI(base_url=pool_api.url("/v1"), api_key="x", max_retries=0)
    for entry, model in (("primary", "tiny-llama"), ("small", "tiny-gpt2")):
        for text in PROMPTS:
            out = client.chat.completions.with_raw_response.create(
                model=entry, messages=[{"role": "user", "content": text}], max_tokens=8, temperature=0)
            assert out.headers["X-Hearth-Model"] == entry
            parsed = out.parse()
            assert parsed.model == entry and parsed.choices[0].message.content == single_answers[model, text]
    assert len({single_answers["tiny-llama", t] for t in PROMPTS} | {single_answers["tiny-gpt2", PROMPTS[0]]}) > 1


def test_both_entries_hammered_concurrently(pool_api, single_answers):
    jobs = [(entry, model, text) for entry, model in (("primary", "tiny-llama"), ("small", "tiny-gpt2"))
            for text in PROMPTS] * 3  # fmt: skip
    results: list = [None] * len(jobs)

    def run(i, entry, text):
        response = chat(pool_api, text, entry)
        results[i] = (response.status_code, response.headers.get("X-Hearth-Model"), response.json())

    threads = [threading.Thread(target=run, args=(i, e, t)) for i, (e, _, t) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (entry, model, text), (status, header, body) in zip(jobs, results):
        assert status == 200 and header == entry and body["model"] == entry
        assert body["choices"][0]["message"]["content"] == single_answers[model, text]


def test_no_model_goes_to_default_and_version_selects(pool_api, single_answers):
    expected = single_answers["tiny-llama", PROMPTS[0]]
    for model in (None, "", "primary:2", "tiny-llama:2"):
        response = chat(pool_api, model=model)
        assert response.status_code == 200 and response.json()["model"] == "primary"
        assert response.json()["choices"][0]["message"]["content"] == expected
    completion = requests.post(pool_api.url("/v1/completions"), json={"prompt": "a b", "max_tokens": 2,
                                                                       "model": "small"}, timeout=60)  # fmt: skip
    assert completion.json()["model"] == "small" and completion.headers["X-Hearth-Model"] == "small"


@pytest.mark.parametrize("name, close", [("primry", "primary"), ("gpt-3.5-turbo", None), ("primary:3", "primary")])
def test_unknown_name_is_404_listing_names(pool_api, name, close):
    response = chat(pool_api, model=name)
    error = response.json()["error"]
    assert response.status_code == 404 and error["code"] == "model_not_found" and error["param"] == "model"
    assert "primary" in error["message"] and "small" in error["message"] and name in error["message"]
    assert (f"did you mean {close!r}" in error["message"]) if close else "did you mean" not in error["message"]


def test_models_list_entries_then_folder(pool_api):
    from openai import OpenAI

    models = OpenAI(base_url=pool_api.url("/v1"), api_key="x", max_retries=0).models.list().data
    assert [m.id for m in models[:2]] == ["primary", "small"]
    assert [m.model_extra["model"] for m in models[:2]] == ["tiny-llama", "tiny-gpt2"]
    assert all(m.model_extra["loaded"] for m in models[:2]) and models[0].model_extra["version"] == "2"
    rest = {m.id: m.model_extra["loaded"] for m in models[2:]}
    assert rest["tiny-llama"] is False and rest["tiny-gpt2"] is False and "broken" in rest
    assert requests.get(pool_api.url("/v1/models/small"), timeout=10).json()["model"] == "tiny-gpt2"
    missing = requests.get(pool_api.url("/v1/models/smal"), timeout=10)
    assert missing.status_code == 404 and "did you mean 'small'" in missing.json()["error"]["message"]


def test_info_reports_every_entry_with_its_settings(pool_api):
    info = requests.get(pool_api.url("/v1/internal/model/info"), timeout=10).json()
    assert info["model_name"] == "tiny-llama"
    entries = {e["name"]: e for e in info["entries"]}
    assert entries["primary"]["default"] and not entries["small"]["default"]
    assert entries["small"]["settings"] == {"instruction_template": "ChatML"} and entries["primary"]["settings"] == {}
    assert entries["small"]["instruction_template"].startswith("ChatML") and entries["small"]["max_batch_size"] == 4
    assert entries["primary"]["version"] == "2"


def test_unloading_one_leaves_the_other_answering(fresh_pool):
    server, runtime = fresh_pool
    unloaded = requests.post(server.url("/v1/internal/model/unload"), json={"name": "small"}, timeout=60)
    assert unloaded.status_code == 200 and unloaded.json()["unloaded"] is True
    gone = chat(server, model="small")
    assert gone.status_code == 503 and gone.json()["error"]["code"] == "model_not_loaded"
    assert "small" in gone.json()["error"]["message"]
    assert chat(server).status_code == 200 and chat(server, model="primary").json()["model"] == "primary"
    missing = requests.post(server.url("/v1/internal/model/unload"), json={"name": "nope"}, timeout=60)
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "name"
    assert "primary" in missing.json()["error"]["message"]
    reloaded = requests.post(server.url("/v1/internal/model/load"), json={"model_name": "tiny-gpt2", "name": "small"},
                             timeout=120)  # fmt: skip
    assert reloaded.status_code == 200 and chat(server, model="small").json()["model"] == "small"


def test_load_into_new_entry_while_others_serve(fresh_pool, single_answers):
    server, runtime = fresh_pool
    statuses, stop = [], threading.Event()

    def client(model):
        while not stop.is_set():
            statuses.append(chat(server, model=model, max_tokens=3).status_code)

    workers = [threading.Thread(target=client, args=(m,)) for m in ("primary", "small")]
    for w in workers:
        w.start()
    time.sleep(0.3)
    loaded = requests.post(server.url("/v1/internal/model/load"),
                           json={"model_name": "tiny-gpt2", "name": "extra", "settings": {"instruction_template":
                                                                                          "ChatML"}}, timeout=120)
    time.sleep(0.3)
    stop.set()
    for w in workers:
        w.join()
    assert loaded.status_code == 200 and loaded.json()["name"] == "extra"
    assert statuses.count(200) >= 2 and set(statuses) == {200}
    extra = chat(server, model="extra")
    assert extra.json()["model"] == "extra" and extra.headers["X-Hearth-Model"] == "extra"
    assert extra.json()["choices"][0]["message"]["content"] == single_answers["tiny-gpt2", PROMPTS[0]]
    ids = [m["id"] for m in requests.get(server.url("/v1/models"), timeout=10).json()["data"]]
    assert ids[:3] == ["primary", "small", "extra"]
    assert requests.post(server.url("/v1/internal/model/unload"), json={"name": "extra"}, timeout=60).status_code == 200
    assert chat(server, model="extra").status_code == 404 and chat(server, model="small").status_code == 200


def test_failed_load_keeps_the_entry_old_model(fresh_pool):
    server, runtime = fresh_pool
    failed = requests.post(server.url("/v1/internal/model/load"), json={"model_name": "broken", "name": "small"},
                           timeout=120)  # fmt: skip
    assert failed.status_code == 400 and "broken" in failed.json()["error"]["message"]
    answer = chat(server, model="small")
    assert answer.status_code == 200 and answer.json()["model"] == "small"
    entries = {e["name"]: e for e in requests.get(server.url("/v1/internal/model/info"), timeout=10).json()["entries"]}
    assert entries["small"]["model_name"] == "tiny-gpt2" and entries["small"]["settings"] == {
        "instruction_template": "ChatML"}
    new = requests.post(server.url("/v1/internal/model/load"), json={"model_name": "broken", "name": "fresh"},
                        timeout=120)  # fmt: skip
    assert new.status_code == 400 and chat(server, model="fresh").status_code == 404
    bad = requests.post(server.url("/v1/internal/model/load"), json={"model_name": "tiny-gpt2", "name": "a:b"},
                        timeout=60)  # fmt: skip
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "name"


def test_on_demand_unloads_least_recently_used_idle_entry(pool_root):
    from extensions.openai.app import create_app

    serving = {"models": {"primary": {"model": "tiny-llama"}}}
    runtime = pool_runtime(pool_root, serving, **{"model.load_on_demand": True, "model.max_loaded": 1})
    server = LiveServer(create_app(runtime))
    try:
        answer = chat(server, model="tiny-gpt2")
        assert answer.status_code == 200 and answer.json()["model"] == "tiny-gpt2"
        entries = {e["name"]: e["model_name"] for e in
                   requests.get(server.url("/v1/internal/model/info"), timeout=10).json()["entries"]}
        assert entries == {"primary": "None", "tiny-gpt2": "tiny-gpt2"}
        assert chat(server).status_code == 503  # the default entry made room; it is reloaded by name
        assert chat(server, model="tiny-llama").json()["model"] == "tiny-llama"
    finally:
        server.stop()
        runtime.close()


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"models": {}}, "'models' must map"),
        ({"models": {"a": {"model": "x"}}, "default": "b"}, "default 'b'"),
        ({"models": {"a:b": {"model": "x"}}}, "invalid entry name"),
        ({"models": {"a": {"model": "x", "colour": 1}}}, "models.a.colour"),
        ({"models": {"a": {}}}, "models.a.model"),
        ({"models": {"a": "x"}, "extra": 1}, "unknown key 'extra'"),
        ([1], "top level"),
    ],
)
def test_bad_serving_file_names_the_problem(data, fragment):
    from modules.errors import SettingsError
    from modules.serving import parse_serving

    with pytest.raises(SettingsError, match=fragment.replace("(", r"\(")):
        parse_serving(data)


def test_server_serve_flag(tmp_path, pool_root):
    from test_server import run

    assert "--serve" in run("--help").stdout and "--max-loaded" in run("--help").stdout
    bad = tmp_path / "serve.yaml"
    bad.write_text("models:\n  primary: {model: tiny-llama, colour: red}\n")
    result = run("--serve", str(bad), "--model-dir", str(pool_root), "--nowebui")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "models.primary.colour" in lines[0]
    bad.write_text("models:\n  primary: {model: no-such-model}\n")
    result = run("--serve", str(bad), "--model-dir", str(pool_root), "--nowebui")
    assert result.returncode == 2 and "no-such-model" in result.stderr and "Traceback" not in result.stderr


def test_ui_chat_talks_to_the_picked_entry(pool_api, tmp_path):
    from modules.chat import ChatOptions, ChatSession, HistoryStore, ReplyParams, new_conversation
    from modules.generation import SamplingParams

    runtime = pool_api.app.extensions["hearth"].runtime
    session = ChatSession(runtime, HistoryStore(tmp_path), new_conversation(runtime.prompts, "instruct", "Assistant"))
    params = ReplyParams(SamplingParams(temperature=0), max_new_tokens=8)
    list(session.send(PROMPTS[0], ChatOptions(model="small"), params))
    assert session.context.model == "small (tiny-gpt2)" and session.context.template == "ChatML"  # small's setting
    small_reply = session.conversation.last_reply()
    api = chat(pool_api, PROMPTS[0], "small").json()["choices"][0]["message"]["content"]
    assert small_reply == api  # the UI and the API share the engine's front half
    list(session.regenerate(ChatOptions(), params))
    assert session.context.model == "primary (tiny-llama)" and session.context.template == "model"
