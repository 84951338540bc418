"""Chat completions through the official openai SDK against the live server (tiny random-weight model)."""

from __future__ import annotations

import asyncio

import openai
import pytest
import requests

from tests.conftest import MAX_MODEL_LEN, ServerProcess
from tests.server.openai.conftest import sse_events

HELLO = [{"role": "user", "content": "Say hello."}]


def test_models_lists_the_served_model(client: openai.OpenAI, torch_server: ServerProcess) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [torch_server.model]


def test_chat_completion_shape_and_usage(client: openai.OpenAI, model_id: str) -> None:
    response = client.chat.completions.create(model=model_id, messages=HELLO, max_tokens=8, temperature=0)
    choice = response.choices[0]
    assert response.object == "chat.completion" and response.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    usage = response.usage
    assert usage is not None and usage.prompt_tokens > 5 and 1 <= usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens >= 0


def test_repeated_prompt_reports_cached_tokens(client: openai.OpenAI, model_id: str, torch_server: ServerProcess) -> None:
    messages = [{"role": "user", "content": "A long shared question " * 20}]
    client.chat.completions.create(model=model_id, messages=messages, max_tokens=2, temperature=0)
    again = client.chat.completions.create(model=model_id, messages=messages, max_tokens=2, temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens >= 64  # type: ignore[union-attr]


def test_n_gives_n_choices(client: openai.OpenAI, model_id: str) -> None:
    response = client.chat.completions.create(model=model_id, messages=HELLO, max_tokens=6, n=3, seed=1)
    assert [c.index for c in response.choices] == [0, 1, 2]


def test_seed_reproduces_and_differs(client: openai.OpenAI, model_id: str) -> None:
    def sample(seed: int) -> str:
        r = client.chat.completions.create(
            model=model_id, messages=HELLO, max_tokens=16, temperature=1.0, top_p=1.0, seed=seed,
            extra_body={"top_k": 0, "ignore_eos": True},
        )  # fmt: skip
        return r.choices[0].message.content or ""

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_stop_string_ends_the_text_before_it(client: openai.OpenAI, model_id: str) -> None:
    kwargs = dict(model=model_id, messages=HELLO, temperature=1.0, seed=3, max_tokens=40, extra_body={"ignore_eos": True})
    full = client.chat.completions.create(**kwargs).choices[0].message.content or ""  # type: ignore[arg-type]
    stop = full[10:13]
    assert len(stop) == 3
    cut = client.chat.completions.create(**kwargs, stop=[stop]).choices[0]  # type: ignore[arg-type]
    assert cut.finish_reason == "stop"
    assert cut.message.content == full[: full.index(stop)]


def test_logprobs_shape(client: openai.OpenAI, model_id: str) -> None:
    response = client.chat.completions.create(
        model=model_id, messages=HELLO, max_tokens=5, logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True}
    )
    content = response.choices[0].logprobs.content  # type: ignore[union-attr]
    assert len(content) == response.usage.completion_tokens == 5  # type: ignore[union-attr]
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        values = [t.logprob for t in entry.top_logprobs]
        assert values == sorted(values, reverse=True) and values[0] >= entry.logprob - 1e-6
        assert bytes(entry.bytes or []).decode(errors="replace") != "" or entry.token == ""


def test_streaming_follows_openai_framing(torch_server: ServerProcess, model_id: str) -> None:
    body = {"model": model_id, "messages": HELLO, "max_tokens": 6, "stream": True, "n": 2,
            "stream_options": {"include_usage": True}, "ignore_eos": True}  # fmt: skip
    events = list(sse_events(f"{torch_server.url}/v1/chat/completions", body))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 12
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks[:-1] if c["choices"][0]["index"] == index]
        assert mine[0]["delta"]["role"] == "assistant"
        assert [c["finish_reason"] for c in mine][:-1] == [None] * (len(mine) - 1)
        assert mine[-1]["finish_reason"] == "length"
    assert all(c.get("usage") is None for c in chunks[:-1])


def test_stream_equals_non_stream(client: openai.OpenAI, model_id: str) -> None:
    kwargs = dict(model=model_id, messages=HELLO, max_tokens=24, temperature=0, extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**kwargs).choices[0].message.content  # type: ignore[arg-type]
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(**kwargs, stream=True) if c.choices]  # type: ignore[arg-type]
    assert "".join(pieces) == whole


def test_async_client_concurrent_and_streamed(torch_server: ServerProcess, model_id: str) -> None:
    async def main() -> tuple[list[str], str]:
        async with openai.AsyncOpenAI(base_url=f"{torch_server.url}/v1", api_key="unused", max_retries=0) as client:

            async def one(i: int) -> str:
                r = await client.chat.completions.create(
                    model=model_id, messages=[{"role": "user", "content": f"Question {i}"}], max_tokens=8, temperature=0
                )
                return r.choices[0].message.content or ""

            answers = await asyncio.gather(*(one(i) for i in range(6)))
            parts = []
            stream = await client.chat.completions.create(
                model=model_id, messages=[{"role": "user", "content": "Question 0"}], max_tokens=8, temperature=0,
                stream=True,
            )  # fmt: skip
            async for chunk in stream:
                parts += [c.delta.content or "" for c in chunk.choices]
            return list(answers), "".join(parts)

    answers, streamed = asyncio.run(main())
    assert len(answers) == 6 and streamed == answers[0]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"audio": {"voice": "x"}}, "audio"),
        ({"temperature": 3}, "temperature"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"n": 9}, "n"),
        ({"tool_choice": "required"}, "tool_choice"),
    ],
)
def test_invalid_or_unsupported_parameters_are_400_naming_them(
    client: openai.OpenAI, model_id: str, extra: dict, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model_id, messages=HELLO, max_tokens=4, extra_body=extra)
    error = info.value.body
    assert isinstance(error, dict) and error["type"] == "invalid_request_error"
    assert param in (error.get("param") or "") or param in error["message"], error


def test_image_content_is_rejected(client: openai.OpenAI, model_id: str) -> None:
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model_id, messages=[message], max_tokens=4)  # type: ignore[list-item]


def test_context_overflow_is_400_with_both_numbers(client: openai.OpenAI, model_id: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model_id, messages=HELLO, max_tokens=MAX_MODEL_LEN)
    assert info.value.code == "context_length_exceeded"
    assert str(MAX_MODEL_LEN) in info.value.message


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=HELLO, max_tokens=4)


def test_thinking_off_is_all_content(client: openai.OpenAI, model_id: str, torch_server: ServerProcess) -> None:
    tokens = requests.post(
        f"{torch_server.url}/tokenize", json={"messages": HELLO, "enable_thinking": False}, timeout=30
    ).json()["tokens"]
    text = requests.post(f"{torch_server.url}/detokenize", json={"tokens": tokens}, timeout=30).json()["prompt"]
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    response = client.chat.completions.create(
        model=model_id, messages=HELLO, max_tokens=12, temperature=0, extra_body={"enable_thinking": False}
    )
    message = response.choices[0].message
    assert getattr(message, "reasoning_content", None) is None
    assert "<think>" not in (message.content or "")
