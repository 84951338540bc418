"""Fields that must change what the server does: user, parallel_tool_calls, strict, ignore_eos with a grammar."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.conftest import ServerProcess
from tests.server.openai.test_structured_and_tools import WEATHER

FLAG = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}


def test_user_is_logged_with_the_response_id(client: openai.OpenAI, model_id: str, torch_server: ServerProcess) -> None:
    chat = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=2, user="alice-42"
    )
    response = client.responses.create(model=model_id, input="hi", max_output_tokens=2, user="bob-7")
    log = torch_server.log()
    assert f"request {chat.id}: user 'alice-42'" in log
    assert f"request {response.id}: user 'bob-7'" in log


def test_ignore_eos_stops_when_the_grammar_is_complete(client: openai.OpenAI, model_id: str) -> None:
    response = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Answer."}], max_tokens=300,
        response_format={"type": "json_schema", "json_schema": {"name": "flag", "schema": FLAG}},
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    choice = response.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content or ""), FLAG)
    assert response.usage is not None and response.usage.completion_tokens < 30


def test_invalid_tool_call_block_stays_in_content_and_is_logged(
    client: openai.OpenAI, model_id: str, torch_server: ServerProcess
) -> None:
    # A forced call cut off by max_tokens is not a valid call: it comes back as content exactly as written
    # (nothing is lost, no call is made up), and the server log names the response.
    response = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER], tool_choice="required",  # type: ignore[list-item]
        max_tokens=12, temperature=0.7,
    )  # fmt: skip
    choice = response.choices[0]
    assert choice.finish_reason == "length" and not choice.message.tool_calls
    assert (choice.message.content or "").startswith('<tool_call>\n{"name": "get_weather')
    assert f"request {response.id}: 1 invalid <tool_call> block(s) returned as content text" in torch_server.log()


def strict(tool: dict) -> dict:
    return {**tool, "function": {**tool["function"], "strict": True}}


def test_strict_function_with_auto_is_400_and_enforced_when_forced(client: openai.OpenAI, model_id: str) -> None:
    ask = [{"role": "user", "content": "Weather?"}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model_id, messages=ask, tools=[strict(WEATHER)], max_tokens=4)  # type: ignore[arg-type,list-item]
    assert "strict" in info.value.body["message"] and info.value.body["param"] == "tools"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=model_id, input="Weather?", max_output_tokens=4,
                                tools=[{"type": "function", **strict(WEATHER)["function"]}])  # type: ignore[list-item]  # fmt: skip
    forced = client.chat.completions.create(
        model=model_id, messages=ask, tools=[strict(WEATHER)], tool_choice="required", max_tokens=300, temperature=0.7  # type: ignore[arg-type,list-item]
    )
    calls = forced.choices[0].message.tool_calls or []
    assert calls
    for call in calls:
        jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
