"""The Anthropic Messages API through the official anthropic SDK against the live server (tiny random model)."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest
import requests

from tests.conftest import MAX_MODEL_LEN, ServerProcess
from tests.server.anthropic.conftest import client_of

HELLO: list[Any] = [{"role": "user", "content": "Say hello."}]
# Greedy output of the tiny model is all newlines. This SDK version dropped temperature/top_k from its signature
# (Anthropic deprecated them); older clients send them as plain fields, which is what extra_body does.
SAMPLED: Any = {"extra_body": {"temperature": 1.0, "top_k": 0}}
GREEDY: Any = {"extra_body": {"temperature": 0}}
WEATHER = {
    "name": "get_weather",
    "description": "Weather of a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
                     "required": ["city"], "additionalProperties": False},
}  # fmt: skip


def test_message_shape_and_usage(client: anthropic.Anthropic, model_id: str) -> None:
    message = client.messages.create(model=model_id, max_tokens=8, messages=HELLO, **SAMPLED)  # type: ignore[arg-type]
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == model_id
    assert [b.type for b in message.content] == ["text"] and message.content[0].text  # type: ignore[union-attr]
    assert message.stop_reason == "max_tokens" and message.stop_sequence is None
    assert message.usage.output_tokens == 8 and message.usage.input_tokens > 5


def test_system_blocks_and_cache_read_tokens(client: anthropic.Anthropic, model_id: str) -> None:
    system: Any = [{"type": "text", "text": "You are terse. " * 20, "cache_control": {"type": "ephemeral"}}]
    first = client.messages.create(model=model_id, max_tokens=2, system=system, messages=HELLO, **GREEDY)
    again = client.messages.create(model=model_id, max_tokens=2, system=system, messages=HELLO, **GREEDY)
    total = first.usage.input_tokens + (first.usage.cache_read_input_tokens or 0)
    assert again.usage.cache_read_input_tokens and again.usage.cache_read_input_tokens >= 64
    assert again.usage.input_tokens + again.usage.cache_read_input_tokens == total  # the same prompt, split


def test_stop_sequence_is_reported(client: anthropic.Anthropic, model_id: str) -> None:
    message = client.messages.create(model=model_id, max_tokens=8, messages=HELLO, stop_sequences=["\n"], **GREEDY)
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "\n"
    assert message.usage.output_tokens == 1


def test_streaming_events_and_final_message(client: anthropic.Anthropic, model_id: str) -> None:
    with client.messages.stream(model=model_id, max_tokens=10, messages=HELLO, **SAMPLED) as stream:  # type: ignore[arg-type]
        events = [e.type for e in stream]
        text = "".join(block.text for block in stream.get_final_message().content if block.type == "text")
        final = stream.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert events.count("content_block_start") == events.count("content_block_stop") == 1
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 10 and text


def test_sse_event_lines_name_each_data_type(torch_server: ServerProcess, model_id: str) -> None:
    body = {"model": model_id, "max_tokens": 4, "messages": HELLO, "stream": True, **SAMPLED["extra_body"]}
    with requests.post(f"{torch_server.url}/v1/messages", json=body, stream=True, timeout=120) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines(decode_unicode=True) if line]
    pairs = list(zip(lines[::2], lines[1::2], strict=True))
    for event_line, data_line in pairs:
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        assert json.loads(data_line[len("data: ") :])["type"] == event_line[len("event: ") :]
    kinds = [e[len("event: ") :] for e, _ in pairs]
    assert kinds[:2] == ["message_start", "ping"] and kinds[-2:] == ["message_delta", "message_stop"]
    delta = json.loads(pairs[-2][1][len("data: ") :])
    assert delta["delta"]["stop_reason"] == "max_tokens" and delta["usage"]["output_tokens"] == 4


def test_forced_tool_use_whole_and_streamed(client: anthropic.Anthropic, model_id: str) -> None:
    kwargs: Any = dict(model=model_id, max_tokens=200, messages=[{"role": "user", "content": "Weather in Paris?"}],
                       tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather"},
                       extra_body={"temperature": 0.7})  # fmt: skip
    message = client.messages.create(**kwargs)
    assert message.stop_reason == "tool_use"
    call = message.content[-1]
    assert call.type == "tool_use" and call.name == "get_weather" and call.id.startswith("toolu_")
    assert isinstance(call.input, dict) and set(call.input) == {"city"}
    with client.messages.stream(**kwargs) as stream:
        partial = "".join(e.delta.partial_json for e in stream
                          if e.type == "content_block_delta" and e.delta.type == "input_json_delta")  # fmt: skip
        final = stream.get_final_message()
    streamed = [b for b in final.content if b.type == "tool_use"]
    assert final.stop_reason == "tool_use" and len(streamed) == 1
    assert json.loads(partial) == streamed[0].input and set(streamed[0].input) == {"city"}  # type: ignore[arg-type]


def test_tool_result_history_is_answered(client: anthropic.Anthropic, model_id: str, torch_server: ServerProcess) -> None:
    history: Any = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me check."},
                                          {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "20C"},
                                     {"type": "text", "text": "And tomorrow?"}]},
    ]  # fmt: skip
    message = client.messages.create(model=model_id, max_tokens=4, messages=history, tools=[WEATHER], **SAMPLED)  # type: ignore[arg-type]
    assert message.stop_reason in ("max_tokens", "end_turn", "tool_use")
    count = client.messages.count_tokens(model=model_id, messages=history, tools=[WEATHER]).input_tokens
    assert count == message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)
    # The same conversation in chat-completions form renders to the same prompt.
    chat = [{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "Let me check.", "tool_calls": [{"id": "toolu_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "20C"},
            {"role": "user", "content": "And tomorrow?"}]  # fmt: skip
    tools = [{"type": "function", "function": {"name": "get_weather", "description": WEATHER["description"],
                                               "parameters": WEATHER["input_schema"]}}]  # fmt: skip
    tokens = requests.post(f"{torch_server.url}/tokenize",
                           json={"messages": chat, "tools": tools, "enable_thinking": False}, timeout=30).json()  # fmt: skip
    assert tokens["count"] == count


def test_count_tokens_counts_what_messages_would_send(client: anthropic.Anthropic, model_id: str) -> None:
    short = client.messages.count_tokens(model=model_id, messages=HELLO).input_tokens
    longer = client.messages.count_tokens(model=model_id, system="Be brief.", messages=HELLO).input_tokens
    huge = client.messages.count_tokens(model=model_id, messages=[{"role": "user", "content": "word " * MAX_MODEL_LEN}])
    message = client.messages.create(model=model_id, max_tokens=1, messages=HELLO, **GREEDY)
    assert short == message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)
    assert longer > short and huge.input_tokens > MAX_MODEL_LEN  # counted even beyond the context


@pytest.mark.parametrize("stream", [False, True])
def test_thinking_budget_gives_a_thinking_block_then_the_answer(thinking_server: ServerProcess, stream: bool) -> None:
    client = client_of(thinking_server)
    kwargs: Any = dict(model=thinking_server.model, max_tokens=12, messages=HELLO, **SAMPLED,
                       thinking={"type": "enabled", "budget_tokens": 3})  # fmt: skip
    if stream:
        with client.messages.stream(**kwargs) as events:
            deltas = {e.delta.type for e in events if e.type == "content_block_delta"}
            message = events.get_final_message()
        assert {"thinking_delta", "text_delta"} <= deltas
    else:
        message = client.messages.create(**kwargs)
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking and message.content[1].text  # type: ignore[union-attr]
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 12


def test_adaptive_and_omitted_thinking(thinking_server: ServerProcess) -> None:
    client = client_of(thinking_server)
    adaptive = client.messages.create(model=thinking_server.model, max_tokens=6, messages=HELLO, **SAMPLED,
                                      thinking={"type": "adaptive"})  # fmt: skip
    assert [b.type for b in adaptive.content] == ["thinking"]  # no budget: this model thinks to the end
    omitted = client.messages.create(model=thinking_server.model, max_tokens=8, messages=HELLO, **SAMPLED,
                                     thinking={"type": "enabled", "budget_tokens": 2, "display": "omitted"})  # fmt: skip
    assert [b.type for b in omitted.content] == ["thinking", "text"] and omitted.content[0].thinking == ""  # type: ignore[union-attr]


def test_thinking_disabled_or_absent_gives_no_thinking(thinking_server: ServerProcess) -> None:
    client = client_of(thinking_server)
    for thinking in ({"type": "disabled"}, None):
        extra: Any = {"thinking": thinking} if thinking else {}
        message = client.messages.create(model=thinking_server.model, max_tokens=6, messages=HELLO, **SAMPLED, **extra)  # type: ignore[arg-type]
        assert [b.type for b in message.content] == ["text"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"frequency_penalty": 1}, "frequency_penalty"),
        ({"temperature": 1.5}, "temperature"),
        ({"thinking": {"type": "enabled", "budget_tokens": 64}}, "budget_tokens"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "image"),
        ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hel"}]}, "prefill"),
        ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}}, "nope"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools"),
    ],
)
def test_bad_requests_are_anthropic_400s_naming_the_problem(
    torch_server: ServerProcess, model_id: str, body: dict[str, Any], words: str
) -> None:
    full = {"model": model_id, "max_tokens": 16, "messages": HELLO, **body}
    response = requests.post(f"{torch_server.url}/v1/messages", json={k: v for k, v in full.items() if v is not None},
                             timeout=30)  # fmt: skip
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert words in error["error"]["message"], error


def test_sdk_errors_carry_anthropic_types(client: anthropic.Anthropic, model_id: str) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="claude-unknown", max_tokens=4, messages=HELLO)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as too_long:
        client.messages.create(model=model_id, max_tokens=MAX_MODEL_LEN, messages=HELLO)
    assert str(MAX_MODEL_LEN) in too_long.value.body["error"]["message"]  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.count_tokens(model=model_id, messages=[])
