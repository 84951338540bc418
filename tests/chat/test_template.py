"""Our Qwen3 chat template renders the documented ChatML layouts."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from qwen3_api.engine.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok(tiny_model_dir):  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def render(tok, messages, **kwargs):  # type: ignore[no-untyped-def]
    return tok.apply_chat_template(messages, tokenize=False, **kwargs)


def test_basic_turns_and_generation_prompt(tok) -> None:  # type: ignore[no-untyped-def]
    text = render(
        tok,
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        add_generation_prompt=True,
    )
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_thinking_off_inserts_empty_think_block(tok) -> None:  # type: ignore[no-untyped-def]
    text = render(tok, [{"role": "user", "content": "Hi"}], add_generation_prompt=True, enable_thinking=False)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    on = render(tok, [{"role": "user", "content": "Hi"}], add_generation_prompt=True, enable_thinking=True)
    assert on.endswith("<|im_start|>assistant\n")


def test_content_parts_are_joined(tok) -> None:  # type: ignore[no-untyped-def]
    parts = [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]
    assert "<|im_start|>user\nHello there<|im_end|>" in render(tok, [{"role": "user", "content": parts}])


def test_tools_are_listed_in_the_system_turn(tok) -> None:  # type: ignore[no-untyped-def]
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    text = render(tok, [{"role": "system", "content": "Sys."}, {"role": "user", "content": "Weather?"}], tools=[tool])
    assert text.startswith("<|im_start|>system\nSys.\n\n# Tools\n")
    assert "<tools>\n" + json.dumps(tool) + "\n</tools>" in text
    assert text.count("<|im_start|>system") == 1


def test_tool_calls_and_grouped_tool_responses(tok) -> None:  # type: ignore[no-untyped-def]
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "w", "arguments": {"city": "Paris"}}},
                {"type": "function", "function": {"name": "w", "arguments": '{"city": "Rome"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "a", "content": "20C"},
        {"role": "tool", "tool_call_id": "b", "content": "25C"},
    ]
    text = render(tok, messages)
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "w", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "w", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>\n'
    ) in text
    assert (
        "<|im_start|>user\n<tool_response>\n20C\n</tool_response>\n<tool_response>\n25C\n</tool_response><|im_end|>\n"
    ) in text


def test_earlier_thinking_is_dropped_but_current_turn_keeps_it(tok) -> None:  # type: ignore[no-untyped-def]
    messages = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "<think>\nold reasoning\n</think>\n\nA1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2", "reasoning_content": "new reasoning"},
    ]
    text = render(tok, messages)
    assert "old reasoning" not in text and "<|im_start|>assistant\nA1<|im_end|>" in text
    assert "<|im_start|>assistant\n<think>\nnew reasoning\n</think>\n\nA2<|im_end|>" in text


def test_plain_prompt_rule(tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    tokenizer = Tokenizer(tiny_model_dir)
    templated = tokenizer.render_chat([{"role": "user", "content": "Hi"}], enable_thinking=False)
    assert tokenizer.prompt_token_ids("Hi") == tokenizer.encode(templated)
    chatml = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.prompt_token_ids(chatml) == tokenizer.encode(chatml)
    assert tokenizer.prompt_token_ids("Hi", raw=True) == tokenizer.encode("Hi")
    assert tokenizer.eos_token_ids == (151645, 151643)
