"""JSON output and forced tool calls on a random-weight model: the grammar makes the output valid anyway."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b", "c"]}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "role": {"enum": ["admin", "user"]},
    },
    "required": ["name", "age", "address", "role"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 16}, "unit": {"enum": ["C", "F"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 8}}, "required": ["zone"]},
    },
}
ASK = [{"role": "user", "content": "Tell me about someone."}]
# Random weights pick among allowed tokens almost uniformly; capping string lengths keeps outputs short.
SAMPLING = dict(temperature=0.7, max_tokens=400, seed=5)


def schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}}


@pytest.mark.parametrize(
    "schema",
    [
        PERSON,
        {"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": 5}, "minItems": 1, "maxItems": 4},
        {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "number"}}, "required": ["ok", "n"],
         "additionalProperties": False},
    ],
)
def test_json_schema_output_validates(client: openai.OpenAI, model_id: str, schema: dict) -> None:
    response = client.chat.completions.create(
        model=model_id, messages=ASK, response_format=schema_format(schema), **SAMPLING  # type: ignore[arg-type]
    )
    choice = response.choices[0]
    assert choice.finish_reason == "stop", choice
    jsonschema.validate(json.loads(choice.message.content or ""), schema)


def test_json_schema_streamed_validates(client: openai.OpenAI, model_id: str) -> None:
    stream = client.chat.completions.create(
        model=model_id, messages=ASK, response_format=schema_format(PERSON), stream=True, **SAMPLING  # type: ignore[arg-type]
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), PERSON)


def test_json_object_output_parses(client: openai.OpenAI, model_id: str) -> None:
    # A free-form object may nest on and on under random weights: biases toward `}` and `"` and against `{`, `[`
    # (tokens 92, 1, 90, 58) let it close.
    response = client.chat.completions.create(
        model=model_id, messages=ASK, response_format={"type": "json_object"}, temperature=0.7, max_tokens=400,
        seed=2, logit_bias={"92": 5, "1": 5, "90": -5, "58": -5},
    )  # fmt: skip
    assert response.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(response.choices[0].message.content or ""), dict)


def test_invalid_schema_is_400(client: openai.OpenAI, model_id: str) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=model_id, messages=ASK, max_tokens=5,
            response_format=schema_format({"type": "object", "properties": {"x": {"type": "no-such-type"}}}),  # type: ignore[arg-type]
        )  # fmt: skip


def test_named_tool_choice_gives_a_valid_call(client: openai.OpenAI, model_id: str) -> None:
    response = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER, TIME],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, **SAMPLING,  # type: ignore[arg-type]
    )  # fmt: skip
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].type == "function" and calls[0].id.startswith("call_")
    assert calls[0].function.name == "get_weather"
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER["function"]["parameters"])
    assert "<tool_call>" not in (choice.message.content or "")


def test_required_tool_call_streamed(client: openai.OpenAI, model_id: str) -> None:
    stream = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "What time is it?"}], tools=[WEATHER, TIME],  # type: ignore[list-item]
        tool_choice="required", parallel_tool_calls=False, stream=True, **SAMPLING,  # type: ignore[arg-type]
    )  # fmt: skip
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    content = ""
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                if call.function and call.function.name:
                    assert call.index not in names and call.id  # the name comes first, with the id
                    names[call.index] = call.function.name
                arguments[call.index] = arguments.get(call.index, "") + ((call.function and call.function.arguments) or "")
            finish = choice.finish_reason or finish
    assert finish == "tool_calls" and list(names) == [0]
    tool = {"get_weather": WEATHER, "get_time": TIME}[names[0]]
    jsonschema.validate(json.loads(arguments[0]), tool["function"]["parameters"])
    assert "<tool_call>" not in content


def test_tool_call_round_trip_is_accepted(client: openai.OpenAI, model_id: str) -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
    ]  # fmt: skip
    response = client.chat.completions.create(model=model_id, messages=messages, tools=[WEATHER], max_tokens=5)  # type: ignore[arg-type,list-item]
    assert response.choices[0].finish_reason in ("stop", "length", "tool_calls")
