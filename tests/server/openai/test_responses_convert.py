"""Responses -> chat completions translation: reasoning.effort carries thinking and its budget."""

from __future__ import annotations

import pytest

from qwen3_api.server.openai.params import REASONING_EFFORT_BUDGETS
from qwen3_api.server.openai.responses_convert import input_messages, to_chat_request
from qwen3_api.server.openai.responses_protocol import ResponsesRequest


@pytest.mark.parametrize(
    ("effort", "thinking", "budget"),
    [("none", False, None), ("minimal", False, None), ("low", True, 1024), ("medium", True, 4096),
     ("high", True, 16384), (None, None, None)],
)
def test_effort_sets_thinking_and_its_budget(effort: str | None, thinking: bool | None, budget: int | None) -> None:
    body = {"model": "m", "input": "hi"} | ({"reasoning": {"effort": effort}} if effort else {})
    request = ResponsesRequest.model_validate(body)
    chat = to_chat_request(request, input_messages(request))
    assert chat.enable_thinking is thinking
    assert chat.thinking_budget == budget
    if budget is not None:
        assert budget == REASONING_EFFORT_BUDGETS[effort]  # the same budgets as chat completions' reasoning_effort
