"""Chat, thinking, tools and history through the API with each real Qwen3 chat template (one server each)."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
import requests

from tests.conftest import ServerProcess

THINK_START, THINK_END = "151667", "151668"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object", "properties": {"city": {"type": "string", "maxLength": 8}}, "required": ["city"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def client(template_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{template_server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def prompt_text(template_server: ServerProcess, **body: Any) -> str:
    """The prompt the server renders for a chat request (through /tokenize and /detokenize)."""
    tokens = requests.post(f"{template_server.url}/tokenize", json=body, timeout=30).json()["tokens"]
    return str(requests.post(f"{template_server.url}/detokenize", json={"tokens": tokens}, timeout=30).json()["prompt"])


def chat(client: openai.OpenAI, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
    return client.chat.completions.create(model=client.models.list().data[0].id, messages=messages, **kwargs)  # type: ignore[arg-type]


def test_text_parts_render_like_a_string(template_server: ServerProcess, client: openai.OpenAI) -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]}]
    as_string = [{"role": "user", "content": "Hello there"}]
    assert "<|im_start|>user\nHello there<|im_end|>" in prompt_text(template_server, messages=parts)
    with_parts = chat(client, parts, max_tokens=2, temperature=0)
    with_string = chat(client, as_string, max_tokens=2, temperature=0)
    assert with_parts.usage.prompt_tokens == with_string.usage.prompt_tokens


def test_chat_answers_with_the_template_generation_prompt(
    template: str, template_server: ServerProcess, client: openai.OpenAI
) -> None:
    hello = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = prompt_text(template_server, messages=hello)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n")
    opens = "<|im_start|>assistant\n<think>\n" if template == "qwen3-4b-thinking-2507" else "<|im_start|>assistant\n"
    assert text.endswith(opens)
    response = chat(client, hello, max_tokens=6, temperature=1.0, seed=3, extra_body={"ignore_eos": True})
    assert response.usage.completion_tokens == 6 and response.choices[0].finish_reason == "length"


@pytest.mark.parametrize("stream", [False, True])
def test_thinking_follows_the_template(template: str, client: openai.OpenAI, stream: bool) -> None:
    # The model is kept from ever closing its thought on its own.
    kwargs: dict[str, Any] = dict(max_tokens=8, temperature=1.0, seed=5, extra_body={"ignore_eos": True, "top_k": 0,
                                  "logit_bias": {THINK_END: -100}})  # fmt: skip
    reasoning, content = _ask(client, stream, **kwargs)
    if template == "qwen3-4b-thinking-2507":  # the template opened the thought: everything is reasoning
        assert reasoning and not content
    else:  # the model never opened a thought
        assert reasoning is None and content


@pytest.mark.parametrize("stream", [False, True])
def test_thinking_budget_ends_an_endless_thought(template: str, client: openai.OpenAI, stream: bool) -> None:
    if template != "qwen3-4b-thinking-2507":
        pytest.skip("only this template opens a thought without the model's help")
    kwargs: dict[str, Any] = dict(max_tokens=12, temperature=1.0, seed=5, extra_body={"ignore_eos": True, "top_k": 0,
                                  "logit_bias": {THINK_END: -100}, "thinking_budget": 4})  # fmt: skip
    reasoning, content = _ask(client, stream, **kwargs)
    assert reasoning and content  # the thought ended after 4 tokens; the other 7 are the answer


def test_thinking_off_where_the_template_has_a_switch(template: str, template_server: ServerProcess, client: openai.OpenAI) -> None:
    hello = [{"role": "user", "content": "Hi"}]
    text = prompt_text(template_server, messages=hello, enable_thinking=False)
    if template == "qwen3-4b":
        assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
        with pytest.raises(openai.BadRequestError) as info:
            chat(client, hello, max_tokens=4, extra_body={"enable_thinking": False, "thinking_budget": 4})
        assert info.value.body["param"] == "thinking_budget"  # type: ignore[index]
    else:
        assert "</think>" not in text  # no switch: the template ignores enable_thinking


def _ask(client: openai.OpenAI, stream: bool, **kwargs: Any) -> tuple[str | None, str]:
    messages = [{"role": "user", "content": "Say hello."}]
    if not stream:
        message = chat(client, messages, **kwargs).choices[0].message
        return getattr(message, "reasoning_content", None), message.content or ""
    reasoning, content = [], []
    for chunk in chat(client, messages, stream=True, **kwargs):
        for choice in chunk.choices:
            reasoning.append(getattr(choice.delta, "reasoning_content", None) or "")
            content.append(choice.delta.content or "")
    return "".join(reasoning) or None, "".join(content)


def test_tools_are_offered_and_a_forced_call_is_parsed(template_server: ServerProcess, client: openai.OpenAI) -> None:
    question = [{"role": "user", "content": "Weather in Paris?"}]
    text = prompt_text(template_server, messages=question, tools=[WEATHER])
    assert "<tools>\n" + json.dumps(WEATHER) + "\n</tools>" in text
    assert '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' in text
    response = chat(client, question, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False,
                    max_tokens=200,
                    temperature=0.7, seed=5)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments), dict)


def test_history_with_tool_calls_results_and_reasoning(
    template: str, template_server: ServerProcess, client: openai.OpenAI
) -> None:
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "reasoning_content": "I should look it up.",
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "20C"}]},
    ]  # fmt: skip
    text = prompt_text(template_server, messages=history, tools=[WEATHER])
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>' in text
    assert "<|im_start|>user\n<tool_response>\n20C\n</tool_response><|im_end|>\n" in text
    # The call came after the last user question: templates that know thinking keep its reasoning.
    assert ("<think>\nI should look it up.\n</think>" in text) == (template != "qwen3-4b-instruct-2507")
    later = [*history, {"role": "assistant", "content": "It is 20C."}, {"role": "user", "content": "Thanks"}]
    text = prompt_text(template_server, messages=later, tools=[WEATHER])
    assert "I should look it up." not in text  # reasoning before the last question is dropped
    response = chat(client, later, tools=[WEATHER], max_tokens=4, temperature=0)
    assert response.usage.prompt_tokens > 50 and response.choices[0].finish_reason in ("stop", "length")
