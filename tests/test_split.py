"""A/B splits: arms served in proportion to their weights, sticky per user, every answer in the preference log,
/v1/feedback ratings, and the export of preference pairs in TRL's conversational format."""
from __future__ import annotations

import json

import pytest
import requests

from fault_upstream import FaultUpstream
from test_remote import chat, front_server


@pytest.fixture(scope="module")
def arms():
    made = {name: FaultUpstream(name) for name in ("left", "right")}
    yield made
    for upstream in made.values():
        upstream.close()


@pytest.fixture(scope="module")
def split_server(models_root, arms, tmp_path_factory):
    log = tmp_path_factory.mktemp("prefs") / "logs" / "preferences.jsonl"
    models = {
        "left": {"device": "api", "base_url": arms["left"].base_url},
        "right": {"device": "api", "base_url": arms["right"].base_url},
        "ab": {"split": {"left": 1, "right": 1}},
        "local": {"model": "tiny-llama"},
        "mixed": {"split": {"left": 3, "local": 1}},
    }
    server, runtime = front_server(models_root, models, preference_log=str(log))
    yield server, log
    server.stop()
    runtime.close()


def records(log, kind):
    return [r for r in map(json.loads, log.read_text().splitlines()) if r["type"] == kind]


def test_one_to_one_split_serves_both_arms_and_logs_each_answer(split_server, arms):
    server, log = split_server
    before = len(records(log, "response")) if log.exists() else 0
    served = []
    for i in range(100):
        response = chat(server, "ab", stream=bool(i % 2))
        assert response.status_code == 200
        served.append(response.headers["X-Hearth-Model"])
        response.content  # read streams to the end: the answer is logged once complete
    counts = {arm: served.count(arm) for arm in ("left", "right")}
    assert sum(counts.values()) == 100 and min(counts.values()) >= 30, counts
    logged = records(log, "response")[before:]
    assert len(logged) == 100
    assert {r["arm"] for r in logged} == {"left", "right"}
    for r in logged:
        assert r["split"] == "ab" and r["response"] == arms[r["arm"]].text and r["messages"][0]["content"]
    assert oct(log.stat().st_mode & 0o777) == oct(0o600)


def test_logged_id_is_the_response_id_and_feedback_rates_it(split_server):
    server, log = split_server
    body = chat(server, "ab").json()
    assert records(log, "response")[-1]["id"] == body["id"]
    rated = requests.post(server.url("/v1/feedback"), json={"id": body["id"], "rating": 1}, timeout=10)
    assert rated.status_code == 200
    assert records(log, "feedback")[-1] == {**records(log, "feedback")[-1], "id": body["id"], "rating": 1}
    unknown = requests.post(server.url("/v1/feedback"), json={"id": "chatcmpl-nope", "rating": 1}, timeout=10)
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "id"
    bad = requests.post(server.url("/v1/feedback"), json={"id": body["id"], "rating": 5}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rating"


def test_streamed_response_id_is_logged(split_server):
    server, log = split_server
    with chat(server, "ab", stream=True) as response:
        ids = {json.loads(line[6:])["id"] for line in response.iter_lines(decode_unicode=True)
               if line.startswith("data: {")}  # fmt: skip
    assert len(ids) == 1 and records(log, "response")[-1]["id"] == ids.pop()


def test_sticky_user_always_gets_the_same_arm(split_server):
    server, _ = split_server
    for user in ("alice", "bob", "carol"):
        arms = {chat(server, "ab", user=user).headers["X-Hearth-Model"] for _ in range(6)}
        assert len(arms) == 1


def test_split_over_local_and_api_arms_and_completions(split_server):
    server, log = split_server
    served = set()
    for _ in range(24):
        response = requests.post(server.url("/v1/completions"),
                                 json={"model": "mixed", "prompt": "the cat", "max_tokens": 3}, timeout=60)  # fmt: skip
        assert response.status_code == 200
        served.add(response.headers["X-Hearth-Model"])
    assert served == {"left", "local"}
    last = records(log, "response")[-1]
    assert last["split"] == "mixed" and last["prompt"] == "the cat"


def test_export_pairs_from_oppositely_rated_answers(split_server):
    server, log = split_server
    good = chat(server, "left", messages=[{"role": "user", "content": "pair me"}])  # not a split: not logged
    assert good.status_code == 200
    ids = []
    for _ in range(20):
        body = chat(server, "ab", messages=[{"role": "user", "content": "pair me"}]).json()
        ids.append((body["id"], body["model"]))
        if len({m for _, m in ids}) == 2:
            break
    by_arm = {model: id for id, model in ids}
    requests.post(server.url("/v1/feedback"), json={"id": by_arm["left"], "rating": 1}, timeout=10)
    requests.post(server.url("/v1/feedback"), json={"id": by_arm["right"], "rating": -1}, timeout=10)
    export = requests.get(server.url("/v1/internal/preferences/export"), timeout=10)
    assert export.status_code == 200
    pairs = [json.loads(line) for line in export.text.splitlines()]
    assert {"prompt": [{"role": "user", "content": "pair me"}],
            "chosen": [{"role": "assistant", "content": "answer from left"}],
            "rejected": [{"role": "assistant", "content": "answer from right"}]} in pairs


def test_preference_log_votes_make_pairs(tmp_path):
    from modules.preferences import PreferenceLog

    log = PreferenceLog(tmp_path / "p.jsonl")
    messages = [{"role": "user", "content": "hi"}]
    id = log.compare("ab", messages, ("left", "right"), ("A!", "B!"), "model_b")
    log.compare("ab", messages, ("left", "right"), ("A", "B"), "tie")
    assert log.feedback(id, -1) and not log.feedback("nope", 1)
    assert log.pairs() == [{"prompt": messages, "chosen": [{"role": "assistant", "content": "B!"}],
                            "rejected": [{"role": "assistant", "content": "A!"}]}]  # fmt: skip
    assert PreferenceLog(tmp_path / "p.jsonl").feedback(id, 1)  # ids survive a restart


def test_no_log_configured_means_nothing_written_and_feedback_404(models_root, tmp_path):
    server, runtime = front_server(models_root, {"local": {"model": "tiny-llama"}})
    try:
        response = requests.post(server.url("/v1/feedback"), json={"id": "x", "rating": 1}, timeout=10)
        assert response.status_code == 404 and response.json()["error"]["code"] == "preference_log_disabled"
    finally:
        server.stop()
        runtime.close()
