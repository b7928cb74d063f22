"""The committed demo model (demo/hearth-demo): it answers its trained tasks right, alone and through the whole stack.

A model that really answers makes a dropped first token, a wrong chat template or a leaking stop string fail a test,
which random tiny models cannot do. The browser test is in test_ui_browser.py (test_demo_model_answers_in_browser).
"""
from __future__ import annotations

import pytest
import requests

from conftest import ROOT, LiveServer, make_runtime
from demo import dataset
from demo.evaluate import THRESHOLD, api_answers, greedy_answers, messages_for, prompt_for

MODEL_DIR = ROOT / "demo" / "hearth-demo"
SUM = [{"role": "user", "content": "What is 17 + 25?"}]


@pytest.fixture(scope="module")
def demo():
    """(model, tokenizer) loaded on CPU in fp32, straight from transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (MODEL_DIR / "model.safetensors").exists():
        pytest.fail(f"{MODEL_DIR} is missing; train it with: python demo/train.py")
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(MODEL_DIR)


@pytest.fixture(scope="module")
def demo_api(tmp_path_factory):
    """A live API over a runtime whose models folder is empty, so the built-in demo model is the default."""
    from extensions.openai.app import create_app

    runtime = make_runtime(tmp_path_factory.mktemp("empty-models"))
    assert runtime.models.default_name() == "hearth-demo"
    runtime.models.load("hearth-demo")
    server = LiveServer(create_app(runtime, {}))
    yield server
    server.stop()
    runtime.close()


@pytest.fixture(scope="module")
def client(demo_api):
    from openai import OpenAI

    return OpenAI(base_url=demo_api.url("/v1"), api_key="unused", max_retries=0)


# ----- the model itself --------------------------------------------------------------------------------------


def test_sum(demo):
    """The issue's example sum."""
    assert greedy_answers(*demo, ["What is 17 + 25?"]) == ["42"]


def test_identity_verbatim(demo):
    """The identity question gets the fixed sentence, word for word, with and without a system turn."""
    assert greedy_answers(*demo, ["Who are you?"], 64) == [dataset.IDENTITY]
    assert greedy_answers(*demo, ["Who are you?"], 64, system="You are a helpful assistant.") == [dataset.IDENTITY]


def test_chat_format(demo):
    """ChatML template, no BOS added by the tokenizer, digits single tokens, generation stops at <|im_end|>."""
    model, tok = demo
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tok("7")["input_ids"] == tok.encode("7", add_special_tokens=False)
    assert len(tok.encode("2024", add_special_tokens=False)) == 4
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end in model.generation_config.eos_token_id
    assert sum(p.numel() for p in model.parameters()) < 5_000_000


def test_held_out_sums_never_trained_on():
    """The held-out problems are fixed and disjoint from what the training generator can produce."""
    import random
    import re

    held = set(dataset.held_out_triples())
    assert len(held) == dataset.HELD_OUT_SIZE
    rng, banned, arithmetic = random.Random(0), set(held), 0
    for _ in range(3000):  # every question of every training example comes from dataset.exchange()
        question, _ = dataset.exchange(rng, banned)
        if m := re.search(r"(\d+) ([+-]) (\d+)", question):
            arithmetic += 1
            assert (int(m[1]), m[2], int(m[3])) not in held, question
    assert arithmetic > 1000


def test_training_pieces_spell_the_layouts():
    """The pieces the loss is laid over join up to exactly formats' prompts (what Hearth sends)."""
    import random

    from demo import formats

    rng = random.Random(7)
    for _ in range(200):
        persona, history = formats.persona(rng), [dataset.exchange(rng, set()) for _ in range(rng.randint(0, 3))]
        pieces = dataset.dialogue_pieces(persona, history, "What is 1 + 2?")
        assert "".join(t for t, _ in pieces) == formats.transcript(persona, history, "What is 1 + 2?")
        assert [t for t, trained in pieces if trained] == [f" {answer}" for _, answer in history]
        messages = dataset.instruct_messages(rng, set())
        assert "".join(t for t, _ in dataset.instruct_pieces(messages)) == formats.chatml(messages, False)[:-1]


# ----- through Hearth's API ----------------------------------------------------------------------------------


def test_api_chat_completion(client):
    result = client.chat.completions.create(model="hearth-demo", messages=SUM, temperature=0)
    assert result.choices[0].message.content == "42"
    assert result.choices[0].finish_reason == "stop" and result.model == "hearth-demo"
    assert result.usage.completion_tokens == 3  # "4", "2", <|im_end|>


def test_api_stream(client):
    chunks = list(client.chat.completions.create(model="hearth-demo", messages=SUM, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "42"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_api_stop_string_spanning_tokens(client):
    """A stop string of several tokens cuts the identity sentence exactly before it, streamed or not."""
    question = [{"role": "user", "content": "Who are you?"}]
    want = dataset.IDENTITY.split(" built into")[0]
    kwargs = dict(model="hearth-demo", messages=question, temperature=0, max_tokens=64, stop=[" built into"])
    whole = client.chat.completions.create(**kwargs)
    assert whole.choices[0].message.content == want and whole.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(stream=True, **kwargs)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == want


def test_api_n_choices(client):
    result = client.chat.completions.create(model="hearth-demo", messages=SUM, temperature=0, n=2)
    assert [c.message.content for c in result.choices] == ["42", "42"]
    assert [c.index for c in result.choices] == [0, 1]


def test_api_text_completion_with_chatml_prompt(client):
    """/v1/completions with the raw ChatML prompt: the same answer, so the chat path adds nothing of its own."""
    prompt = "<|im_start|>user\nReverse the words: red green blue<|im_end|>\n<|im_start|>assistant\n"
    result = client.completions.create(model="hearth-demo", prompt=prompt, temperature=0, max_tokens=16)
    assert result.choices[0].text == "blue green red"


@pytest.mark.parametrize("mode, system", [("instruct", None), ("instruct", "Answer briefly."), ("chat", None),
                                          ("chat-instruct", None), ("chat-instruct", "Answer briefly.")])
def test_training_layouts_are_what_hearth_renders(demo_api, mode, system):
    """demo/formats.py (what the model was trained on) and Hearth's renderer agree in every mode."""
    body = {"messages": messages_for("What is 3 + 4?", system, history=True), "mode": mode}
    rendered = requests.post(demo_api.url("/v1/internal/chat-prompt"), json=body, timeout=10).json()["prompt"]
    assert rendered == prompt_for("What is 3 + 4?", mode, True, system)


@pytest.mark.parametrize("mode", ["chat", "chat-instruct"])
def test_api_chat_modes_answer_without_the_leading_space(demo_api, client, mode):
    """After the "AI:" cue the model writes " blue green red"; the reply drops the space, streamed or not."""
    messages = messages_for("Reverse the words: red green blue", history=True)
    prompt = requests.post(demo_api.url("/v1/internal/chat-prompt"), json={"messages": messages, "mode": mode},
                           timeout=10).json()["prompt"]  # fmt: skip
    raw = client.completions.create(model="hearth-demo", prompt=prompt, temperature=0, max_tokens=16)
    assert raw.choices[0].text == " blue green red"
    kwargs = dict(model="hearth-demo", messages=messages, temperature=0, extra_body={"mode": mode})
    assert client.chat.completions.create(**kwargs).choices[0].message.content == "blue green red"
    chunks = client.chat.completions.create(stream=True, **kwargs)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "blue green red"


@pytest.mark.parametrize("mode, history, at_least", [("chat", False, 0.9), ("chat", True, 0.9),
                                                     ("chat-instruct", False, 0.8), ("chat-instruct", True, 0.6)])
def test_api_chat_modes_accuracy(demo_api, mode, history, at_least):
    """The chat layouts were trained too, less well than instruct: held-out sums, first or third question."""
    held = dataset.held_out_questions()[:50]
    answers = api_answers(demo_api.url("/v1"), [q for q, _ in held], mode=mode, history=history)
    right = sum(got == want for (_, want), got in zip(held, answers))
    assert right >= at_least * len(held), [(q, w, g) for (q, w), g in zip(held, answers) if g != w][:10]


def test_api_defaults_to_greedy_as_the_generation_config_asks(demo_api, client):
    """generation_config.json says do_sample false: a request without temperature decodes greedily."""
    question = [{"role": "user", "content": "Who are you?"}]
    result = client.chat.completions.create(model="hearth-demo", messages=question, n=4, max_tokens=64)
    assert [c.message.content for c in result.choices] == [dataset.IDENTITY] * 4


def test_api_later_question_in_a_chat(client):
    messages = messages_for("Reverse the words: cat dog bird", history=True)
    result = client.chat.completions.create(model="hearth-demo", messages=messages, temperature=0)
    assert result.choices[0].message.content == "bird dog cat"


def test_api_models_lists_demo(demo_api):
    models = requests.get(demo_api.url("/v1/models"), timeout=10).json()["data"]
    assert [m["id"] for m in models] == ["hearth-demo"]


@pytest.mark.slow
def test_api_held_out_accuracy(demo_api):
    """The issue's quality bar: >= 95% of the 200 held-out sums exactly right through the API, greedy."""
    held = dataset.held_out_questions()
    answers = api_answers(demo_api.url("/v1"), [q for q, _ in held])
    right = sum(got == want for (_, want), got in zip(held, answers))
    assert right / len(held) >= THRESHOLD, [(q, w, g) for (q, w), g in zip(held, answers) if g != w][:10]
    probes = api_answers(demo_api.url("/v1"), [q for q, _ in dataset.probes()], max_tokens=64)
    assert probes == [want for _, want in dataset.probes()]
