"""The local engine behind the text-level interface: chat and completion requests in, Streams of text deltas out."""
from __future__ import annotations

import threading

import pytest

from modules.engine.base import ChatRequest, CompletionRequest, OutputOptions, SamplerValues

GREEDY = SamplerValues(temperature=0)


@pytest.fixture
def engine(api_runtime):
    return api_runtime.pool.default.engine


def test_chat_renders_submits_and_names_the_entry(engine):
    request = ChatRequest(({"role": "user", "content": "hello"},), sampling=GREEDY,
                          output=OutputOptions(max_tokens=6, ban_eos=True))  # fmt: skip
    preview = engine.preview(request)
    generation = engine.chat(request)
    result = generation.handles[0].result()
    assert generation.model == "tiny-llama" and generation.preview == preview
    assert result.usage.prompt_tokens == preview.tokens and result.usage.completion_tokens == 6
    assert generation.fingerprint == ("float32", preview.template)
    assert engine.chat(request).handles[0].result().choices[0].text == result.choices[0].text  # greedy


def test_completion_of_text_equals_completion_of_its_token_ids(engine):
    ids = tuple(engine.encode("the cat sat"))
    output = OutputOptions(max_tokens=5, ban_eos=True)
    by_text = engine.complete(CompletionRequest(("the cat sat",), sampling=GREEDY, output=output))
    by_ids = engine.complete(CompletionRequest((ids,), sampling=GREEDY, output=output))
    assert by_text.handles[0].result().choices[0].text == by_ids.handles[0].result().choices[0].text
    echo_only = engine.complete(CompletionRequest(("the cat sat",), echo=True, output=OutputOptions(max_tokens=0,
                                                                                                    logprobs=1)))
    assert echo_only.handles == [] and echo_only.prompt_tokens == len(ids)
    assert echo_only.echoes[0][0] == "the cat sat" and echo_only.echoes[0][1]


@pytest.mark.parametrize(
    "call, param",
    [
        (lambda e: e.complete(CompletionRequest(((10**6,),))), "prompt"),
        (lambda e: e.decode([-1]), "tokens"),
        (lambda e: e.next_token_probs("hi", None, 0), "top_logits"),
        (lambda e: e.next_token_probs("", None, 5), "prompt"),
        (lambda e: e.chat(ChatRequest(({"role": "user", "content": "hi"},), output=OutputOptions(max_tokens=0))),
         "max_tokens"),
        (lambda e: e.complete(CompletionRequest(("x",), sampling=SamplerValues(logit_bias={"a": 1}))), "logit_bias"),
    ],
)
def test_bad_input_names_the_parameter(engine, call, param):
    from modules.errors import HearthError

    with pytest.raises(HearthError) as exc:
        call(engine)
    assert exc.value.param == param


def test_next_token_probs_carry_ids_bytes_and_probabilities(engine):
    top = engine.next_token_probs("the cat", None, 5)
    assert len(top) == 5 and all(isinstance(t.token, bytes) and 0 <= t.probability <= 1 for t in top)
    assert top == sorted(top, key=lambda t: -t.probability) and sum(t.probability for t in top) <= 1.0001


def test_two_loads_of_one_new_name_make_one_entry(models_root):
    from conftest import make_runtime

    runtime = make_runtime(models_root)
    try:
        results = []
        threads = [threading.Thread(target=lambda: results.append(runtime.pool.load("tiny-gpt2", "twin")[0]))
                   for _ in range(2)]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results[0] is results[1] and runtime.pool.names() == ["twin"]
    finally:
        runtime.close()
