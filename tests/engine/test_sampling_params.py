"""SamplingParams rejects every invalid value with an error naming the parameter."""

from __future__ import annotations

import math

import pytest

from qwen3_api.engine.sampling import SamplingParams
from qwen3_api.errors import InvalidRequestError


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"temperature": -0.01}, "temperature"),
        ({"temperature": 2.01}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": math.inf}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"seed": 1.5}, "seed"),
        ({"logprobs": 21}, "top_logprobs"),
        ({"stop": ("",)}, "stop"),
        ({"logit_bias": ((5, 101.0),)}, "logit_bias"),
    ],
)
def test_invalid_values_name_the_parameter(kwargs: dict, param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(**kwargs)
    assert info.value.param == param
    assert param.split("_")[0] in str(info.value)


def test_valid_params_and_derived_flags() -> None:
    params = SamplingParams(temperature=0, max_tokens=5, presence_penalty=0.5)
    assert params.greedy and params.needs_penalties
    assert not SamplingParams().greedy and not SamplingParams().needs_penalties
    with pytest.raises(AttributeError):
        params.temperature = 1.0  # type: ignore[misc]
