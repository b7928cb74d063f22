"""Model management over the API: list, info, load, unload, stop-generation; other clients keep getting answers."""
from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest
import requests

from conftest import LiveServer, make_runtime, models_with_broken, with_server_settings

ADMIN = {"Authorization": "Bearer admin-key"}
USER = {"Authorization": "Bearer user-key"}
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture(scope="module")
def admin_api(models_root, tmp_path_factory):
    root = models_with_broken(models_root, tmp_path_factory.mktemp("admin-models"))
    runtime = make_runtime(root)
    runtime.models.load("tiny-llama")
    from extensions.openai.app import create_app

    server = LiveServer(create_app(with_server_settings(runtime, api_key="user-key", admin_key="admin-key")))
    yield server, runtime
    server.stop()
    runtime.close()


def get(server, path, headers=ADMIN):
    return requests.get(server.url(path), headers=headers, timeout=60)


def post(server, path, body=None, headers=ADMIN):
    return requests.post(server.url(path), json=body or {}, headers=headers, timeout=120)


def test_admin_key_guards_management(admin_api):
    server, _ = admin_api
    assert get(server, "/v1/internal/model/list", USER).status_code == 401
    assert post(server, "/v1/internal/model/unload", headers=USER).status_code == 401
    assert get(server, "/v1/internal/model/info", USER).status_code == 200
    assert get(server, "/v1/internal/model/list").json()["model_names"] == [
        "broken", "tiny-gpt2", "tiny-llama", "hearth-demo"]  # the models folder, then the built-in demo model


def test_info_reports_model_and_template(admin_api):
    server, _ = admin_api
    info = get(server, "/v1/internal/model/info", USER).json()
    assert info["model_name"] == "tiny-llama" and info["loader"] == "transformers"
    assert info["instruction_template"] == "model (model)" and info["context_length"] == 512


def test_load_while_other_clients_keep_getting_answers(admin_api):
    server, runtime = admin_api
    answers, stop = [], threading.Event()

    def client():
        while not stop.is_set():
            answers.append(requests.post(server.url("/v1/chat/completions"), json=CHAT, headers=USER, timeout=60)
                           .status_code)  # fmt: skip

    worker = threading.Thread(target=client)
    worker.start()
    time.sleep(0.3)
    loaded = post(server, "/v1/internal/model/load", {"model_name": "tiny-gpt2", "args": {"max_batch_size": 4},
                                                      "settings": {"instruction_template": "ChatML"}})  # fmt: skip
    time.sleep(0.3)
    stop.set()
    worker.join()
    assert loaded.status_code == 200 and loaded.json()["model_name"] == "tiny-gpt2"
    assert answers.count(200) >= 2 and set(answers) == {200}  # no 503s: the swap waits, requests are re-prepared
    info = get(server, "/v1/internal/model/info", USER).json()
    assert info["model_name"] == "tiny-gpt2" and info["max_batch_size"] == 4
    assert info["instruction_template"].startswith("ChatML")
    chat = requests.post(server.url("/v1/chat/completions"), json=CHAT, headers=USER, timeout=60)
    assert chat.json()["model"] == "tiny-gpt2" and chat.headers["X-Hearth-Template"].startswith("ChatML")
    models = requests.get(server.url("/v1/models"), headers=USER, timeout=10).json()["data"]
    assert models[0]["id"] == "tiny-gpt2" and models[0]["loaded"]


def test_broken_load_keeps_old_model_serving(admin_api):
    server, runtime = admin_api
    before = runtime.models.info.name
    failed = post(server, "/v1/internal/model/load", {"model_name": "broken"})
    assert failed.status_code == 400 and "broken" in failed.json()["error"]["message"]
    assert runtime.models.info.name == before
    assert requests.post(server.url("/v1/chat/completions"), json=CHAT, headers=USER, timeout=60).status_code == 200


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"model_name": "../tiny-llama"}, 404, "model_name"),
        ({"model_name": "/etc"}, 404, "model_name"),
        ({"model_name": "nope"}, 404, "model_name"),
        ({"model_name": "tiny-llama", "settings": {"instruction_template": "Nope"}}, 400, "instruction_template"),
        ({"model_name": "tiny-llama", "settings": {"colour": "red"}}, 400, "settings.colour"),
        ({"model_name": 5}, 400, "model_name"),
    ],
)
def test_bad_loads(admin_api, body, status, param):
    server, runtime = admin_api
    before = runtime.models.info.name
    response = post(server, "/v1/internal/model/load", body)
    assert response.status_code == status and response.json()["error"]["param"] == param
    assert runtime.models.info.name == before


def test_seed_load_example_with_other_loaders_args(admin_api):
    """text-generation-webui's documented load call: its 4-bit and llama.cpp arguments are ignored and reported."""
    server, runtime = admin_api
    before = runtime.models.info.name
    body = {"model_name": before, "args": {"load_in_4bit": True, "n_gpu_layers": 12},
            "settings": {"instruction_template": "Alpaca"}}  # fmt: skip
    out = subprocess.run(["curl", "-s", "-k", server.url("/v1/internal/model/load"),
                          "-H", "Content-Type: application/json", "-H", f"Authorization: {ADMIN['Authorization']}",
                          "-d", json.dumps(body)],
                         capture_output=True, text=True, timeout=120, check=True).stdout  # fmt: skip
    loaded = json.loads(out)
    assert loaded["status"] == "ok" and loaded["ignored_args"] == ["load_in_4bit", "n_gpu_layers"]
    assert get(server, "/v1/internal/model/info", USER).json()["instruction_template"].startswith("Alpaca")
    post(server, "/v1/internal/model/load", {"model_name": before})  # back to the model's own template


def test_strict_api_refuses_other_loaders_args(admin_api):
    from extensions.openai.app import create_app

    server, runtime = admin_api
    strict = create_app(with_server_settings(runtime, strict_api=True)).test_client()
    response = strict.post("/v1/internal/model/load", json={"model_name": "tiny-llama", "args": {"load_in_4bit": True}})
    assert response.status_code == 400 and response.json["error"]["param"] == "args.load_in_4bit"


def test_request_naming_unloaded_local_model_is_404(admin_api):
    server, runtime = admin_api
    other = "tiny-llama" if runtime.models.info.name != "tiny-llama" else "tiny-gpt2"
    response = requests.post(server.url("/v1/chat/completions"), json={**CHAT, "model": other}, headers=USER,
                             timeout=60)  # fmt: skip
    assert response.status_code == 404 and other in response.json()["error"]["message"]


def test_load_on_demand(models_root):
    from extensions.openai.app import create_app

    runtime = make_runtime(models_root, **{"model.load_on_demand": True})
    runtime.models.load("tiny-llama")
    server = LiveServer(create_app(runtime))
    try:
        response = requests.post(server.url("/v1/chat/completions"), json={**CHAT, "model": "tiny-gpt2"}, timeout=60)
        assert response.status_code == 200 and response.json()["model"] == "tiny-gpt2"
    finally:
        server.stop()
        runtime.close()


def test_stop_generation_ends_streams(admin_api):
    server, _ = admin_api
    body = {**CHAT, "max_tokens": 200, "stream": True, "ignore_eos": True}
    with requests.post(server.url("/v1/chat/completions"), json=body, headers=USER, stream=True, timeout=60) as r:
        lines = r.iter_lines()
        next(lines)
        stopped = post(server, "/v1/internal/stop-generation")
        rest = [line for line in lines if line]
    assert stopped.status_code == 200 and stopped.json()["cancelled"] >= 1
    assert rest[-1] == b"data: [DONE]" and b'"finish_reason":"stop"' in b"".join(rest)


def test_unload_then_503_then_load_again(admin_api):
    server, runtime = admin_api
    assert post(server, "/v1/internal/model/unload").json()["unloaded"] is True
    response = requests.post(server.url("/v1/chat/completions"), json=CHAT, headers=USER, timeout=60)
    assert response.status_code == 503 and response.json()["error"]["code"] == "model_not_loaded"
    assert get(server, "/v1/internal/model/info", USER).json()["model_name"] == "None"
    assert post(server, "/v1/internal/model/load", {"model_name": "tiny-llama"}).status_code == 200
    assert requests.post(server.url("/v1/chat/completions"), json=CHAT, headers=USER, timeout=60).status_code == 200
