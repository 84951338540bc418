"""POST /v1/responses with the official openai SDK against the live server (both engine backends)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest
import requests

from tests.server.openai.test_structured_and_tools import TIME, WEATHER

WEATHER_TOOL = {"type": "function", **WEATHER["function"]}
TIME_TOOL = {"type": "function", **TIME["function"]}
FLAG = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}
FLAG_FORMAT = {"format": {"type": "json_schema", "name": "flag", "schema": FLAG, "strict": True}}


def prompt_tokens(base_url: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> int:
    """Prompt length of the equivalent chat request, from /tokenize."""
    body: dict[str, Any] = {"messages": messages}
    if tools:
        body["tools"] = tools
    response = requests.post(f"{base_url}/tokenize", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return int(response.json()["count"])


def server_url(client: openai.OpenAI) -> str:
    return str(client.base_url).rstrip("/").removesuffix("/v1")


def test_string_input_response_object(client: openai.OpenAI, model_id: str) -> None:
    response = client.responses.create(
        model=model_id, input="Hello there", instructions="Be brief.", max_output_tokens=12, temperature=0.5,
        metadata={"trace": "t1"}, user="user-7",
    )  # fmt: skip
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status in ("completed", "incomplete")
    if response.status == "incomplete":
        assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert [item.type for item in response.output] == ["message"]
    assert response.output[0].role == "assistant"  # type: ignore[union-attr]
    assert isinstance(response.output_text, str)
    assert response.metadata == {"trace": "t1"} and response.user == "user-7"
    assert response.temperature == 0.5 and response.instructions == "Be brief."
    usage = response.usage
    assert usage is not None and 1 <= usage.output_tokens <= 12
    assert usage.input_tokens_details.cached_tokens >= 0 and usage.output_tokens_details.reasoning_tokens == 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    # instructions are a system message before the input: the prompt is exactly the chat one
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    assert usage.input_tokens == prompt_tokens(server_url(client), chat)


def test_retrieve_and_delete(client: openai.OpenAI, model_id: str) -> None:
    created = client.responses.create(model=model_id, input="Hi", max_output_tokens=4)
    fetched = client.responses.retrieve(created.id)
    assert fetched.id == created.id and fetched.output_text == created.output_text
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.retrieve(created.id)
    assert created.id in str(info.value)


def test_store_false_is_not_kept(client: openai.OpenAI, model_id: str) -> None:
    created = client.responses.create(model=model_id, input="Hi", max_output_tokens=4, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model=model_id, input="Again", previous_response_id=created.id, max_output_tokens=4)
    assert info.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert info.value.body["type"] == "invalid_request_error"  # type: ignore[index]


def test_previous_response_id_continues_the_conversation(client: openai.OpenAI, model_id: str) -> None:
    first = client.responses.create(model=model_id, input="My name is Ada.", max_output_tokens=8, instructions="A")
    second = client.responses.create(
        model=model_id, input="What is my name?", previous_response_id=first.id, max_output_tokens=8
    )
    assert second.previous_response_id == first.id
    # the stored turn (input and output) comes before the new input; instructions are not carried over
    chat = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "What is my name?"},
    ]
    assert second.usage is not None and second.usage.input_tokens == prompt_tokens(server_url(client), chat)


def test_unknown_previous_response_id_is_404(client: openai.OpenAI, model_id: str) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model=model_id, input="x", previous_response_id="resp_nope", max_output_tokens=4)
    assert "resp_nope" in info.value.body["message"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("extra", "named"),
    [({"background": True}, "background"), ({"prompt_cache_key": "k"}, "prompt_cache_key"),
     ({"text": {"verbosity": "low"}}, "text.verbosity")],
)  # fmt: skip
def test_unsupported_fields_are_400_by_name(
    client: openai.OpenAI, model_id: str, extra: dict[str, Any], named: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=model_id, input="x", max_output_tokens=4, extra_body=extra)
    assert named in info.value.body["message"] and info.value.body["param"] == named  # type: ignore[index]


def test_json_schema_output(client: openai.OpenAI, model_id: str) -> None:
    response = client.responses.create(model=model_id, input="Answer.", text=FLAG_FORMAT, max_output_tokens=40)  # type: ignore[arg-type]
    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), FLAG)
    assert response.text is not None and response.text.format.type == "json_schema"


def test_stream_event_sequence(client: openai.OpenAI, model_id: str) -> None:
    events = list(client.responses.create(model=model_id, input="Answer.", text=FLAG_FORMAT, stream=True,  # type: ignore[arg-type]
                                          max_output_tokens=40))  # fmt: skip
    kinds = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]  # fmt: skip
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]  # fmt: skip
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    jsonschema.validate(json.loads(text), FLAG)
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == text and events[-4].text == text  # type: ignore[union-attr]
    assert final.usage.output_tokens >= 1 and final.id == events[0].response.id  # type: ignore[union-attr]


def test_stream_helper_final_response(client: openai.OpenAI, model_id: str) -> None:
    with client.responses.stream(model=model_id, input="Answer.", text=FLAG_FORMAT, max_output_tokens=40) as stream:  # type: ignore[arg-type]
        deltas = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.output_text == deltas and final.status == "completed"
    assert client.responses.retrieve(final.id).output_text == deltas  # streamed responses are stored too


def _forced_call(client: openai.OpenAI, model_id: str, **kwargs: Any) -> Any:
    return client.responses.create(
        model=model_id, input="Weather in Paris?", tools=[WEATHER_TOOL, TIME_TOOL], max_output_tokens=800,  # type: ignore[list-item]
        # greedy: unseeded sampling by a random model can spell a string argument past any limit (then no call
        # completes; seen in suite runs at 120, 300 and 800 tokens)
        temperature=0, **kwargs,
    )  # fmt: skip


def test_function_call_round_trip(client: openai.OpenAI, model_id: str) -> None:
    response = _forced_call(client, model_id, tool_choice={"type": "function", "name": "get_weather"})
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].call_id.startswith("call_")
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER["function"]["parameters"])
    # hand the call back with its result, as an agent loop does
    follow = [{"role": "user", "content": "Weather in Paris?"}, *[item.model_dump(exclude_none=True) for item in response.output],
              {"type": "function_call_output", "call_id": calls[0].call_id, "output": "21 C"}]  # fmt: skip
    second = client.responses.create(model=model_id, input=follow, tools=[WEATHER_TOOL], max_output_tokens=5)  # type: ignore[arg-type,list-item]
    chat = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": calls[0].call_id, "type": "function", "function": {
            "name": "get_weather", "arguments": calls[0].arguments}}]},
        {"role": "tool", "tool_call_id": calls[0].call_id, "content": "21 C"},
    ]  # fmt: skip
    assert second.usage is not None
    assert second.usage.input_tokens == prompt_tokens(server_url(client), chat, [WEATHER])


def test_function_call_via_previous_response_id(client: openai.OpenAI, model_id: str) -> None:
    first = _forced_call(client, model_id, tool_choice="required", parallel_tool_calls=False)
    (call,) = [item for item in first.output if item.type == "function_call"]
    second = client.responses.create(
        model=model_id, previous_response_id=first.id, tools=[WEATHER_TOOL, TIME_TOOL], max_output_tokens=5,  # type: ignore[list-item]
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "done"}],
    )  # fmt: skip
    assert second.status in ("completed", "incomplete")


def test_function_call_streamed(client: openai.OpenAI, model_id: str) -> None:
    with client.responses.stream(
        model=model_id, input="What time is it?", tools=[WEATHER_TOOL, TIME_TOOL], tool_choice="required",  # type: ignore[list-item]
        # greedy: a random model sampling at a temperature can write a string argument past any token limit, and
        # then the response ends `incomplete` (seen once in a suite run)
        parallel_tool_calls=False, max_output_tokens=300, temperature=0,
    ) as stream:  # fmt: skip
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")  # type: ignore[union-attr]
    (call,) = [item for item in final.output if item.type == "function_call"]
    assert call.arguments == deltas
    tool = {"get_weather": WEATHER, "get_time": TIME}[call.name]
    jsonschema.validate(json.loads(call.arguments), tool["function"]["parameters"])


def test_reasoning_effort_turns_thinking_on_and_off(thinking_client: openai.OpenAI) -> None:
    model = thinking_client.models.list().data[0].id
    thought = thinking_client.responses.create(
        model=model, input="Think.", reasoning={"effort": "low"}, max_output_tokens=10, temperature=1.0
    )
    # the template opened <think>, and a random model rarely closes it: all ten tokens are reasoning
    assert thought.output[0].type == "reasoning"
    assert thought.output[0].content and thought.output[0].content[0].text  # type: ignore[union-attr]
    assert thought.usage is not None and thought.usage.output_tokens_details.reasoning_tokens >= 1
    direct = thinking_client.responses.create(
        model=model, input="Think.", reasoning={"effort": "minimal"}, max_output_tokens=10, temperature=1.0
    )
    assert [item.type for item in direct.output] == ["message"]
    assert direct.usage is not None and direct.usage.output_tokens_details.reasoning_tokens == 0


def test_reasoning_streamed(thinking_client: openai.OpenAI) -> None:
    model = thinking_client.models.list().data[0].id
    events = list(thinking_client.responses.create(
        model=model, input="Think.", reasoning={"effort": "high"}, max_output_tokens=10, temperature=1.0, stream=True,
    ))  # fmt: skip
    kinds = [e.type for e in events]
    assert kinds[2] == "response.output_item.added" and events[2].item.type == "reasoning"  # type: ignore[union-attr]
    assert "response.reasoning_text.delta" in kinds and kinds[-1] == "response.incomplete"
    text = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")  # type: ignore[union-attr]
    assert events[-1].response.output[0].content[0].text == text  # type: ignore[union-attr]


def test_effort_with_json_format_is_400(client: openai.OpenAI, model_id: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=model_id, input="x", text=FLAG_FORMAT, reasoning={"effort": "high"})  # type: ignore[arg-type]
    assert info.value.body["param"] == "reasoning.effort"  # type: ignore[index]


def test_unsupported_input_part_is_400(client: openai.OpenAI, model_id: str) -> None:
    image = [{"role": "user", "content": [{"type": "input_image", "image_url": "https://example.com/a.png"}]}]
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=model_id, input=image, max_output_tokens=4)  # type: ignore[arg-type]
    assert "input_image" in info.value.body["message"]  # type: ignore[index]
