"""Log-likelihoods as lm-evaluation-harness's `local-completions` model reads them, against transformers itself.

lm-eval sends the context and continuation together as token ids (or text), with echo, logprobs=1 and max_tokens=1,
then sums `token_logprobs[ctxlen:-1]` and checks each continuation token is the top one (is_greedy)."""
from __future__ import annotations

import pytest
import requests


@pytest.fixture(scope="module")
def reference(llama_dir):
    """The tiny Llama and its tokenizer straight from transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(llama_dir)


def expected(reference, ids: list[int], ctxlen: int) -> tuple[float, bool]:
    """Sum of the continuation's logprobs and whether each is the argmax, from one forward over `ids`."""
    import torch

    model, _ = reference
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    rows = logprobs[ctxlen - 1 : len(ids) - 1]  # row i predicts token i + 1
    targets = torch.tensor(ids[ctxlen:])
    total = float(rows.gather(1, targets[:, None]).sum())
    return total, bool((rows.argmax(-1) == targets).all())


def served(api, prompt, ctxlen: int, **extra) -> tuple[float, bool, dict]:
    """What lm-eval computes from Hearth's answer: (loglikelihood, is_greedy, the choice)."""
    body = {"model": "tiny-llama", "prompt": prompt, "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": 1,
            "seed": 1234, **extra}  # fmt: skip
    response = requests.post(api.url("/v1/completions"), json=body, timeout=60)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    logprobs = choice["logprobs"]
    values, tops = logprobs["token_logprobs"][ctxlen:-1], logprobs["top_logprobs"][ctxlen:-1]
    tokens = logprobs["tokens"][ctxlen:-1]
    greedy = all(max(top, key=top.get) == token for top, token in zip(tops, tokens))
    return sum(values), greedy, choice


CASES = [("The quick brown fox", " jumps over the lazy dog"), ("Numbers: 1 2 3", " 4 5 6"),
         ("User: What is the capital of France?", " Assistant: The capital of France is Paris.")]  # fmt: skip


@pytest.mark.parametrize("context,continuation", CASES)
def test_token_id_prompts_score_as_the_model_does(api, reference, context, continuation):
    _, tokenizer = reference
    ctx = tokenizer.encode(context, add_special_tokens=False)
    ids = ctx + tokenizer.encode(continuation, add_special_tokens=False)
    want, want_greedy = expected(reference, ids, len(ctx))
    got, got_greedy, choice = served(api, ids, len(ctx))
    assert got == pytest.approx(want, abs=1e-3) and got_greedy == want_greedy
    assert len(choice["logprobs"]["tokens"]) == len(ids) + 1  # the prompt's tokens, then the generated one


def test_a_prompt_starting_with_bos_is_scored_after_it(api, reference):
    _, tokenizer = reference
    ctx = [tokenizer.bos_token_id] + tokenizer.encode("Once upon a time", add_special_tokens=False)
    ids = ctx + tokenizer.encode(" there was a hearth", add_special_tokens=False)
    want, want_greedy = expected(reference, ids, len(ctx))
    got, got_greedy, _ = served(api, ids, len(ctx))
    assert got == pytest.approx(want, abs=1e-3) and got_greedy == want_greedy


def test_text_prompts_score_like_their_tokens(api, reference):
    _, tokenizer = reference
    context, continuation = CASES[0]
    ctx = tokenizer.encode(context)  # as the server tokenizes a text prompt (special tokens as the tokenizer adds)
    ids = tokenizer.encode(context + continuation)
    want, want_greedy = expected(reference, ids, len(ctx))
    got, got_greedy, choice = served(api, context + continuation, len(ctx))
    assert choice["text"].startswith(context + continuation)
    assert got == pytest.approx(want, abs=1e-3) and got_greedy == want_greedy


def test_an_eos_generated_token_keeps_its_logprob(api, reference):
    """When the one generated token is EOS, the list still has len(prompt) + 1 entries, so [ctxlen:-1] is right."""
    _, tokenizer = reference
    ctx = tokenizer.encode("The quick brown fox", add_special_tokens=False)
    ids = ctx + tokenizer.encode(" jumps", add_special_tokens=False)
    eos = tokenizer.eos_token_id
    want, _ = expected(reference, ids, len(ctx))
    got, _, choice = served(api, ids, len(ctx), logit_bias={str(eos): 100})
    assert choice["finish_reason"] == "stop" and choice["text"].endswith(" jumps")
    assert len(choice["logprobs"]["token_logprobs"]) == len(ids) + 1
    assert choice["logprobs"]["tokens"][-1] == tokenizer.eos_token
    assert got == pytest.approx(want, abs=1e-3)
