"""Qwen3 thinking through the API: reasoning_content vs content, streamed and not, and mode-aware defaults."""

from __future__ import annotations

import openai
import pytest
import requests

from qwen3_api.config import Settings
from qwen3_api.runtime.loader import load_engine
from qwen3_api.server.openai.protocol import ChatCompletionRequest
from qwen3_api.server.openai.serving_chat import ChatServing

HELLO = [{"role": "user", "content": "Say hello."}]
THINK_CLOSE = "151668"


def ask(client: openai.OpenAI, stream: bool, **extra: object):  # type: ignore[no-untyped-def]
    model = client.models.list().data[0].id
    # Sampled, not greedy: greedy output of the tiny model is all newlines, which both parts strip.
    kwargs = dict(model=model, messages=HELLO, max_tokens=8, temperature=1.0, seed=11,
                  extra_body={"ignore_eos": True, "top_k": 0, **extra})  # fmt: skip
    if not stream:
        message = client.chat.completions.create(**kwargs).choices[0].message  # type: ignore[arg-type]
        return getattr(message, "reasoning_content", None), message.content
    reasoning, content = [], []
    for chunk in client.chat.completions.create(**kwargs, stream=True):  # type: ignore[arg-type]
        for choice in chunk.choices:
            reasoning.append(getattr(choice.delta, "reasoning_content", None) or "")
            content.append(choice.delta.content or "")
    return "".join(reasoning) or None, "".join(content)


@pytest.mark.parametrize("stream", [False, True])
def test_output_inside_a_template_opened_think_is_reasoning(thinking_client: openai.OpenAI, stream: bool) -> None:
    reasoning, content = ask(thinking_client, stream, logit_bias={THINK_CLOSE: -100})
    assert reasoning and "</think>" not in reasoning
    assert not content


@pytest.mark.parametrize("stream", [False, True])
def test_close_tag_ends_reasoning(thinking_client: openai.OpenAI, stream: bool) -> None:
    # Every token forced to `</think>`: the first closes the (empty) reasoning, the rest are plain content.
    reasoning, content = ask(thinking_client, stream, logit_bias={THINK_CLOSE: 100})
    assert reasoning is None
    assert content == "</think>" * 7


@pytest.mark.parametrize("stream", [False, True])
def test_thinking_off_never_shows_reasoning(thinking_client: openai.OpenAI, stream: bool) -> None:
    reasoning, content = ask(thinking_client, stream, enable_thinking=False, logit_bias={THINK_CLOSE: -100})
    assert reasoning is None and content


@pytest.fixture(scope="module")
def serving(tiny_model_dir) -> ChatServing:  # type: ignore[no-untyped-def]
    settings = Settings(model=str(tiny_model_dir), max_model_len=1024)
    return ChatServing(load_engine(settings), settings)


def prepared_params(serving: ChatServing, **body: object):  # type: ignore[no-untyped-def]
    request = ChatCompletionRequest(model=serving.engine.model_name, messages=HELLO, **body)  # type: ignore[arg-type]
    return serving.prepare(request).params


def test_mode_aware_sampling_defaults(serving: ChatServing) -> None:
    thinking = prepared_params(serving)
    assert (thinking.temperature, thinking.top_p, thinking.top_k, thinking.min_p) == (0.6, 0.95, 20, 0.0)
    plain = prepared_params(serving, enable_thinking=False)
    assert (plain.temperature, plain.top_p, plain.top_k, plain.min_p) == (0.7, 0.8, 20, 0.0)
    via_kwargs = prepared_params(serving, chat_template_kwargs={"enable_thinking": False})
    assert via_kwargs.temperature == 0.7
    given = prepared_params(serving, temperature=0.1, top_p=0.5, top_k=3, min_p=0.2)
    assert (given.temperature, given.top_p, given.top_k, given.min_p) == (0.1, 0.5, 3, 0.2)


def test_max_tokens_default_is_what_the_context_leaves(serving: ChatServing) -> None:
    request = ChatCompletionRequest(model=serving.engine.model_name, messages=HELLO)  # type: ignore[arg-type]
    prepared = serving.prepare(request)
    assert prepared.params.max_tokens == 1024 - len(prepared.prompt_token_ids)


# ---- thinking budget (README "Thinking budget") ------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
def test_thinking_budget_ends_a_thought_that_would_never_end(thinking_client: openai.OpenAI, stream: bool) -> None:
    endless = ask(thinking_client, stream, logit_bias={THINK_CLOSE: -100})
    assert endless[0] and not endless[1]  # without a budget the whole output is thought
    reasoning, content = ask(thinking_client, stream, logit_bias={THINK_CLOSE: -100}, thinking_budget=3)
    assert reasoning and content  # 3 tokens of thought, `</think>`, then 4 tokens of answer


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"thinking_budget": 4, "enable_thinking": False}, "thinking_budget"),
        ({"reasoning_effort": "low", "enable_thinking": False}, "reasoning_effort"),
        ({"thinking_budget": 4, "reasoning_effort": "low"}, "thinking_budget"),
        ({"thinking_budget": -1}, "thinking_budget"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"thinking_budget": 4, "response_format": {"type": "json_object"}}, "thinking_budget"),
    ],
)
def test_bad_thinking_budgets_are_400_naming_them(thinking_client: openai.OpenAI, extra: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        ask(thinking_client, False, **extra)
    assert param in (info.value.body.get("param") or "") or param in info.value.message  # type: ignore[union-attr]


def test_reasoning_effort_is_a_documented_budget(serving: ChatServing) -> None:
    assert prepared_params(serving).thinking is None
    for effort, tokens in {"low": 1024, "medium": 4096, "high": 16384}.items():
        thinking = prepared_params(serving, reasoning_effort=effort).thinking
        assert thinking is not None and thinking.max_tokens == tokens
        assert (thinking.start_token_id, thinking.end_token_id, thinking.starts_open) == (151667, 151668, False)
    assert prepared_params(serving, thinking_budget=7).thinking.max_tokens == 7  # type: ignore[union-attr]


def test_generate_thinking_budget(opened_think_model_dir, server_pool) -> None:  # type: ignore[no-untyped-def]
    server = server_pool.get(str(opened_think_model_dir), "--backend", "torch")
    body = {"prompt": "Say hello.", "max_length": 10, "temperature": 0, "ignore_eos": True}
    # Greedy output of the tiny model never writes `</think>` by itself; a budget of 2 puts it third.
    free = requests.post(f"{server.url}/generate", json=body, timeout=120).json()["generated_texts"][0]
    budgeted = requests.post(f"{server.url}/generate", json={**body, "thinking_budget": 2}, timeout=120)
    assert budgeted.status_code == 200, budgeted.text
    assert "</think>" not in free and "</think>" in budgeted.json()["generated_texts"][0]
    bad = requests.post(f"{server.url}/generate", json={**body, "thinking_budget": -2}, timeout=30)
    assert bad.status_code == 422
