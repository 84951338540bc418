"""The Messages API with each real Qwen3 chat template: text, tool use and results, and thinking where it applies."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from tests.conftest import ServerProcess
from tests.server.anthropic.conftest import client_of
from tests.server.anthropic.test_messages import HELLO, SAMPLED, WEATHER


@pytest.fixture(scope="module")
def client(template_server: ServerProcess) -> anthropic.Anthropic:
    return client_of(template_server)


def test_text_blocks_are_one_prompt(client: anthropic.Anthropic, template_server: ServerProcess) -> None:
    blocks: Any = [{"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]}]
    joined: Any = [{"role": "user", "content": "Hello\nthere"}]
    assert client.messages.count_tokens(model=template_server.model, messages=blocks).input_tokens == (
        client.messages.count_tokens(model=template_server.model, messages=joined).input_tokens
    )
    empty: Any = [{"role": "user", "content": ""}]
    assert client.messages.count_tokens(model=template_server.model, messages=blocks).input_tokens > (
        client.messages.count_tokens(model=template_server.model, messages=empty).input_tokens
    )  # the text is rendered, not dropped as Qwen's templates drop non-string content


def test_tool_use_then_tool_result(template: str, client: anthropic.Anthropic, template_server: ServerProcess) -> None:
    ask: Any = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.messages.create(model=template_server.model, max_tokens=200, messages=ask, tools=[WEATHER],  # type: ignore[list-item]
                                   tool_choice={"type": "tool", "name": "get_weather"},
                                   extra_body={"temperature": 0.7})  # fmt: skip
    call = first.content[-1]
    assert first.stop_reason == "tool_use" and call.type == "tool_use" and call.name == "get_weather"
    used = {"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}
    history: Any = [*ask, {"role": "assistant", "content": [used]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "20C"}]}]  # fmt: skip
    second = client.messages.create(model=template_server.model, max_tokens=6, messages=history, tools=[WEATHER], **SAMPLED)  # type: ignore[list-item]
    assert second.stop_reason in ("max_tokens", "end_turn", "tool_use") and second.usage.output_tokens >= 1


@pytest.mark.parametrize("stream", [False, True])
def test_thinking(template: str, client: anthropic.Anthropic, template_server: ServerProcess, stream: bool) -> None:
    kwargs: Any = dict(model=template_server.model, max_tokens=10, messages=HELLO, **SAMPLED,
                       thinking={"type": "enabled", "budget_tokens": 3})  # fmt: skip
    if stream:
        with client.messages.stream(**kwargs) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(**kwargs)
    kinds = [b.type for b in message.content]
    if template == "qwen3-4b-thinking-2507":  # the template opens the thought; the budget ends it
        assert kinds == ["thinking", "text"]
    else:  # the random model never opens a thought by itself
        assert kinds == ["text"]
    off = client.messages.create(model=template_server.model, max_tokens=6, messages=HELLO, **SAMPLED)
    assert [b.type for b in off.content] == ["text"]  # thinking absent is thinking off, on every template
