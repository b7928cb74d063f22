"""The torch samplers, one function at a time."""
import torch

from modules.generation import SamplingParams
from modules.loaders.sampling import apply_bias_and_bans, apply_penalties, filter_logits, sample, top_logprobs


def gen(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_greedy_is_argmax():
    logits = torch.tensor([0.1, 3.0, 2.0])
    assert sample(logits, SamplingParams(temperature=0), gen()) == 1


def test_top_k_keeps_k():
    out = filter_logits(torch.tensor([1.0, 4.0, 3.0, 2.0]), SamplingParams(top_k=2))
    assert torch.isinf(out[0]) and torch.isinf(out[3]) and torch.isfinite(out[1:3]).all()


def test_top_p_keeps_smallest_set_reaching_mass():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    out = filter_logits(probs.log(), SamplingParams(top_p=0.7))
    assert torch.isfinite(out[:2]).all() and torch.isinf(out[2:]).all()


def test_min_p_scales_with_top_probability():
    probs = torch.tensor([0.6, 0.3, 0.05, 0.05])
    out = filter_logits(probs.log(), SamplingParams(min_p=0.2))
    assert torch.isfinite(out[:2]).all() and torch.isinf(out[2:]).all()


def test_typical_p_keeps_at_least_one():
    out = filter_logits(torch.tensor([5.0, 0.0, 0.0]), SamplingParams(typical_p=0.01))
    assert torch.isfinite(out).sum() >= 1


def test_logit_bias_and_bans():
    out = apply_bias_and_bans(torch.zeros(4), {2: 100.0}, [0])
    assert out[2] == 100 and torch.isinf(out[0])
    assert sample(out, SamplingParams(temperature=1.0), gen()) == 2


def test_presence_and_frequency_penalties_follow_openai():
    logits = torch.zeros(4)
    generated = torch.tensor([1, 1, 2])
    out = apply_penalties(logits, SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), generated, generated)
    assert out.tolist() == [0.0, -1.0, -0.75, 0.0]


def test_repetition_penalty_divides_positive_multiplies_negative():
    logits = torch.tensor([2.0, -2.0, 1.0])
    out = apply_penalties(logits, SamplingParams(repetition_penalty=2.0), torch.tensor([0, 1]), torch.tensor([]))
    assert out.tolist() == [1.0, -4.0, 1.0]


def test_same_generator_seed_same_samples():
    logits = torch.randn(50)
    params = SamplingParams(temperature=1.0)
    a = [sample(logits, params, g) for g in [gen(7)] for _ in range(10)]
    g = gen(7)
    b = [sample(logits, params, g) for _ in range(10)]
    assert a == b


def test_top_logprobs_sorted():
    lp = torch.log_softmax(torch.tensor([1.0, 3.0, 2.0]), -1)
    top = top_logprobs(lp, 2)
    assert [t for t, _ in top] == [1, 2]


def test_settings_at_the_float_limits_pick_the_likeliest_token_instead_of_failing():
    """A temperature or repetition penalty of 1e-300 overflows the logits (found by fuzzing: the batch failed)."""
    import torch

    from modules.generation import SamplingParams
    from modules.loaders.sampling import apply_penalties, sample

    logits = torch.tensor([0.5, 2.0, -1.0, 1.0])
    generator = torch.Generator().manual_seed(0)
    assert sample(logits, SamplingParams(temperature=1e-300), generator) == 1
    params = SamplingParams(temperature=1.0, repetition_penalty=5e-324)
    penalized = apply_penalties(logits, params, torch.tensor([3]), torch.tensor([], dtype=torch.long))
    assert sample(penalized, params, generator) == 3  # the penalty "rewards" token 3 without bound


def test_no_repeat_ngram_size_bans_what_transformers_bans():
    """HF's NoRepeatNGramLogitsProcessor on random contexts (with repeats: a vocabulary of 6) and sizes 1-4."""
    from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

    g = gen(0)
    for _ in range(200):
        context = torch.randint(0, 6, (int(torch.randint(1, 30, (1,), generator=g)),), generator=g)
        n = int(torch.randint(1, 5, (1,), generator=g))
        logits = torch.randn(6, generator=g)
        expected = NoRepeatNGramLogitsProcessor(n)(context[None], logits[None].clone())[0]
        got = apply_penalties(logits, SamplingParams(no_repeat_ngram_size=n), context, context[:0])
        assert torch.equal(got, expected), (context.tolist(), n)
