"""Parameter validation: out-of-range values name the parameter."""
import pytest

from modules.errors import InvalidParameter
from modules.generation import GenerationRequest, SamplingParams


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"min_p": 2.0}, "min_p"),
        ({"typical_p": 0.0}, "typical_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"logit_bias": {5: 101}}, "logit_bias"),
        ({"logit_bias": {-1: 1}}, "logit_bias"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_sampling_params_rejects(kwargs, param):
    with pytest.raises(InvalidParameter) as err:
        SamplingParams(**kwargs).validate(vocab_size=100)
    assert err.value.param == param


def test_logit_bias_outside_vocabulary():
    with pytest.raises(InvalidParameter) as err:
        SamplingParams(logit_bias={100: 1.0}).validate(vocab_size=100)
    assert err.value.param == "logit_bias"


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"prompt_ids": ()}, "prompt"),
        ({"prompt_ids": (1, 500)}, "prompt"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
        ({"n": 0}, "n"),
        ({"n": 1000}, "n"),
        ({"logprobs": 21}, "logprobs"),
        ({"stop": ("",)}, "stop"),
        ({"stop_token_ids": (100,)}, "stop_token_ids"),
    ],
)
def test_generation_request_rejects(kwargs, param):
    kwargs.setdefault("prompt_ids", (1, 2))
    with pytest.raises(InvalidParameter) as err:
        GenerationRequest(**kwargs).validate(vocab_size=100)
    assert err.value.param == param


def test_valid_request_passes():
    GenerationRequest((1, 2), SamplingParams(temperature=0, seed=3), max_tokens=5, n=2, stop=("x",)).validate(100)
