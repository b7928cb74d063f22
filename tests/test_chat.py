"""modules.chat: saved histories (atomic, damaged files skipped, names confined) and chat replies on a tiny model."""
from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, make_runtime
from modules.chat import (
    ChatOptions,
    ChatSession,
    Conversation,
    HistoryError,
    HistoryStore,
    ReplyParams,
    character_card,
    history_store,
    new_conversation,
)
from modules.errors import ModelNotLoaded
from modules.generation import GenerationRequest, SamplingParams

GREEDY = SamplingParams(temperature=0)


def chat(mode="chat", character="Example", *texts) -> Conversation:
    c = Conversation.new(mode, character, "Hello!")
    for i, text in enumerate(texts):
        c.messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return c


# ----- the history store -------------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path):
    store = HistoryStore(tmp_path / "history")
    c = chat("chat", "Example", "hi", "hello there")
    path = store.save(c)
    assert path == tmp_path / "history" / "chat" / "Example" / f"{c.id}.json"
    data = json.loads(path.read_text())
    assert data["format"] == "hearth-chat" and data["messages"][1] == {"role": "user", "content": "hi"}
    again = store.load("chat", "Example", c.id)
    assert again.messages == c.messages and again.mode == "chat" and again.character == "Example"
    assert [e.id for e in store.list("chat", "Example").entries] == [c.id]
    assert store.list("instruct", "Example").entries == []  # per mode


def test_store_lives_under_user_data_dir(tmp_path):
    runtime = make_runtime(tmp_path, **{"chat.user_data_dir": str(tmp_path / "ud")})
    try:
        assert history_store(runtime.settings).root == tmp_path / "ud" / "history"
    finally:
        runtime.close()


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    store = HistoryStore(tmp_path)
    c = chat("chat", "Example", "first")
    path = store.save(c)
    before = path.read_text()
    c.add_user("second")

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        store.save(c)
    assert path.read_text() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_killed_writer_never_leaves_a_truncated_file(tmp_path):
    target = tmp_path / "chat.json"
    code = (
        "import sys, json; sys.path.insert(0, %r)\n"
        "from pathlib import Path\nfrom modules.chat import atomic_write\n"
        "i = 0\nwhile True:\n"
        "    i += 1\n    atomic_write(Path(%r), json.dumps({'i': i, 'pad': 'x' * (1 << 20)}))\n"
    ) % (str(ROOT), str(target))
    for delay in (0.4, 0.55, 0.7):
        proc = subprocess.Popen([sys.executable, "-c", code])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if target.exists():
            assert len(json.loads(target.read_text())["pad"]) == 1 << 20
    assert target.exists()


def test_damaged_files_are_reported_and_skipped(tmp_path):
    store = HistoryStore(tmp_path)
    good = chat("chat", "Example", "hi")
    store.save(good)
    folder = store.folder("chat", "Example")
    (folder / "broken.json").write_text('{"messages": [{"role": "user", "cont')
    (folder / "wrong.json").write_text('{"messages": "nope"}')
    (folder / "binary.json").write_bytes(b"\xff\xfe\x00")
    listing = store.list("chat", "Example")
    assert [e.id for e in listing.entries] == [good.id]
    assert sorted(p.split(":")[0] for p in listing.problems) == ["binary.json", "broken.json", "wrong.json"]
    assert store.latest("chat", "Example").id == good.id
    with pytest.raises(HistoryError, match="damaged"):
        store.load("chat", "Example", "broken")


def test_rename_and_delete(tmp_path):
    store = HistoryStore(tmp_path)
    a, b = chat("chat", "Example", "a"), chat("chat", "Example", "b")
    a.id, b.id = "first", "second"
    store.save(a), store.save(b)
    store.rename("chat", "Example", "first", "Lantern talk")
    assert sorted(e.id for e in store.list("chat", "Example").entries) == ["Lantern talk", "second"]
    with pytest.raises(HistoryError, match="already exists"):
        store.rename("chat", "Example", "second", "Lantern talk")
    with pytest.raises(HistoryError, match="no saved chat"):
        store.rename("chat", "Example", "gone", "x")
    store.delete("chat", "Example", "Lantern talk")
    assert [e.id for e in store.list("chat", "Example").entries] == ["second"]
    with pytest.raises(HistoryError):
        store.delete("chat", "Example", "Lantern talk")


@pytest.mark.parametrize("name", ["../x", "..", ".", "a/b", "a\\b", ".hidden", "nul\x00", "", " pad", "x" * 200])
def test_names_never_escape_the_history_folder(tmp_path, name):
    store = HistoryStore(tmp_path / "history")
    with pytest.raises(HistoryError):
        store.folder("chat", name)
    with pytest.raises(HistoryError):
        store.path("chat", "Example", name)
    c = chat("chat", "Example", "hi")
    c.id = name
    with pytest.raises(HistoryError):
        store.save(c)
    with pytest.raises(HistoryError):
        store.rename("chat", "Example", "x", name)
    with pytest.raises(HistoryError):
        store.folder("../chat", "Example")
    assert not (tmp_path / "x").exists() and not (tmp_path / "history").exists()


def test_symlinked_character_folder_outside_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "history" / "chat").mkdir(parents=True)
    (tmp_path / "history" / "chat" / "Evil").symlink_to(outside)
    with pytest.raises(HistoryError, match="outside"):
        HistoryStore(tmp_path / "history").folder("chat", "Evil")


def test_reads_text_generation_webui_histories(tmp_path):
    store = HistoryStore(tmp_path)
    folder = store.folder("chat", "Example")
    folder.mkdir(parents=True)
    tgw = {"internal": [["<|BEGIN-VISIBLE-CHAT|>", "Hi, I'm Ember."], ["hello", "welcome!"]], "visible": []}
    (folder / "20240101-10-00-00.json").write_text(json.dumps(tgw))
    c = store.load("chat", "Example", "20240101-10-00-00")
    assert [m["role"] for m in c.messages] == ["assistant", "user", "assistant"]
    assert c.messages[0]["content"] == "Hi, I'm Ember." and c.messages[2]["content"] == "welcome!"


# ----- conversation edits ------------------------------------------------------------------------------------


def test_greeting_is_kept_by_remove_last_and_regenerate():
    c = Conversation.new("chat", "Example", "Hello!")
    assert c.remove_last() == "" and c.messages == [{"role": "assistant", "content": "Hello!"}]
    assert c.drop_reply_for_regenerate() is False and len(c.messages) == 1
    c.add_user("hi")
    c.messages.append({"role": "assistant", "content": "hey"})
    assert c.drop_reply_for_regenerate() is True and c.messages[-1] == {"role": "user", "content": "hi"}
    c.messages.append({"role": "assistant", "content": "hey"})
    assert c.remove_last() == "hi" and len(c.messages) == 1
    assert Conversation.new("instruct", "Example", "Hello!").messages == []


def test_character_card_fills_in_names(models_root):
    runtime = make_runtime(models_root)
    try:
        card = character_card(runtime.prompts, "Example", "Captain")
        assert card.name == "Ember" and card.picture is not None and "{{" not in card.context
        assert "Captain" in card.context
        greeting = new_conversation(runtime.prompts, "chat", "Example").messages[0]
        assert greeting["role"] == "assistant" and greeting["content"].startswith("*Ember looks up")
        assert character_card(runtime.prompts, "Assistant").greeting
    finally:
        runtime.close()


# ----- replies on a tiny model -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runtime(models_root):
    rt = make_runtime(models_root)
    rt.models.load("tiny-llama")
    yield rt
    rt.close()


@pytest.fixture
def session(runtime, tmp_path):
    store = HistoryStore(tmp_path / "history")
    return ChatSession(runtime, store, new_conversation(runtime.prompts, "chat", "Example"))


def params(tokens=8, seed=1, **sampling) -> ReplyParams:
    return ReplyParams(SamplingParams(seed=seed, **sampling), max_new_tokens=tokens, ban_eos=True)


def test_send_streams_the_reply_and_saves_it(session):
    steps = list(session.send("Hello Ember", ChatOptions(), params(12)))
    assert len(steps) >= 2 and all(b.startswith(a) for a, b in itertools.pairwise(steps))
    messages = session.conversation.messages
    assert [m["role"] for m in messages] == ["assistant", "user", "assistant"] and messages[2]["content"] == steps[-1]
    saved = session.store.load("chat", "Example", session.conversation.id)
    assert saved.messages == messages
    assert session.context.model == "tiny-llama" and 0 < session.context.prompt_tokens < 512


def test_regenerate_replaces_the_last_reply(session):
    list(session.send("Hi", ChatOptions(), params(10, seed=1)))
    first = session.conversation.last_reply()
    list(session.regenerate(ChatOptions(), params(10, seed=2)))
    assert len(session.conversation.messages) == 3 and session.conversation.last_reply() != first
    list(session.regenerate(ChatOptions(), params(10, seed=1)))
    assert session.conversation.last_reply() == first  # same prompt, same seed: same reply
    assert session.store.load("chat", "Example", session.conversation.id).messages[-1]["content"] == first


def test_continue_extends_the_last_reply(session):
    list(session.send("Hi", ChatOptions(), params(4)))
    before = session.conversation.last_reply()
    steps = list(session.continue_(ChatOptions(), params(6, seed=3)))
    after = session.conversation.last_reply()
    assert after.startswith(before) and len(after) > len(before) and steps[-1] == after
    assert len(session.conversation.messages) == 3


def test_remove_last_returns_the_user_text(session):
    list(session.send("Take this back", ChatOptions(), params(4)))
    assert session.remove_last() == "Take this back"
    assert len(session.conversation.messages) == 1  # the greeting stays
    saved = session.store.load("chat", "Example", session.conversation.id)
    assert len(saved.messages) == 1


def test_stop_cancels_the_reply_and_keeps_what_was_written(runtime, tmp_path):
    session = ChatSession(runtime, HistoryStore(tmp_path), new_conversation(runtime.prompts, "instruct", "Assistant"))
    replies = session.send("Tell me everything", ChatOptions(), params(400))
    next(replies)
    session.stop()
    rest = list(replies)
    text = session.conversation.last_reply()
    assert len(runtime.models.loader.encode(text)) < 200 and (not rest or rest[-1] == text)
    assert runtime.scheduler.stats() == {"waiting": 0, "active": 0, "preparing": 0}
    assert session.store.load("instruct", "Assistant", session.conversation.id).messages[-1]["content"] == text


def test_a_streaming_reply_does_not_block_other_requests(runtime, tmp_path):
    session = ChatSession(runtime, HistoryStore(tmp_path), new_conversation(runtime.prompts, "instruct", "Assistant"))
    replies = session.send("Long story please", ChatOptions(), params(300))
    next(replies)  # the UI reply is now running on the scheduler
    other = GenerationRequest(prompt_ids=(1, 5, 6), sampling=GREEDY, max_tokens=3, ban_eos=True)
    started = time.monotonic()
    done = runtime.scheduler.submit(other).result()
    assert len(done.choices[0].token_ids) == 3 and time.monotonic() - started < 10
    assert runtime.scheduler.stats()["active"] >= 1  # the UI reply is still going
    session.stop()
    list(replies)


def test_instruct_mode_and_template_choice(runtime, tmp_path):
    s = ChatSession(runtime, HistoryStore(tmp_path), new_conversation(runtime.prompts, "instruct", "Assistant"))
    list(s.send("What is 2+2?", ChatOptions(instruction_template="ChatML"), params(3)))
    assert s.context.template == "ChatML" and s.context.template_source == "request"
    list(s.regenerate(ChatOptions(), params(3)))
    assert s.context.template == "model"
    assert (tmp_path / "instruct" / "Assistant").is_dir()


def test_chat_instruct_mode_wraps_the_chat_in_the_instruction_template(runtime, tmp_path):
    s = ChatSession(runtime, HistoryStore(tmp_path), new_conversation(runtime.prompts, "chat-instruct", "Example"))
    list(s.send("Hi Ember", ChatOptions(instruction_template="ChatML"), params(3)))
    assert s.context.template == "ChatML" and len(s.conversation.messages) == 3


def test_a_long_character_still_gets_the_room_that_is_left(runtime):
    from modules.chat.session import start_reply

    conversation = new_conversation(runtime.prompts, "chat", "Example")  # a persona of ~400 tiny-model tokens
    conversation.add_user("Hi")
    generation, context = start_reply(runtime, conversation, ChatOptions(), params(400))
    generation.cancel()
    request = generation.handles[0].request
    assert context.prompt_tokens + request.max_tokens == 512 and request.max_tokens < 400


def test_no_model_loaded_is_a_clear_error(models_root, tmp_path):
    rt = make_runtime(models_root)
    try:
        s = ChatSession(rt, HistoryStore(tmp_path), new_conversation(rt.prompts, "chat", "Assistant"))
        with pytest.raises(ModelNotLoaded, match="Model tab"):
            list(s.send("hi", ChatOptions(), params()))
        assert s.conversation.messages[-1] == {"role": "user", "content": "hi"}  # kept: Regenerate retries it
    finally:
        rt.close()
