"""Text completions, /tokenize, /detokenize and streamed /generate against the live server."""

from __future__ import annotations

import openai
import pytest
import requests
from transformers import AutoTokenizer

from tests.conftest import ServerProcess
from tests.server.openai.conftest import sse_events


def test_completion_text_n_and_usage(client: openai.OpenAI, model_id: str) -> None:
    response = client.completions.create(model=model_id, prompt="Once upon a time", max_tokens=5, n=2, seed=4)
    assert response.object == "text_completion" and [c.index for c in response.choices] == [0, 1]
    assert response.usage is not None and response.usage.prompt_tokens == 4


def test_completion_batch_of_prompts_and_token_ids(client: openai.OpenAI, model_id: str) -> None:
    response = client.completions.create(model=model_id, prompt=["a", "b c"], max_tokens=3, temperature=0)
    assert len(response.choices) == 2
    by_ids = client.completions.create(model=model_id, prompt=[64, 65, 66], max_tokens=3, temperature=0)
    assert by_ids.usage.prompt_tokens == 3  # type: ignore[union-attr]


def test_completion_echo_and_logprobs(client: openai.OpenAI, model_id: str) -> None:
    response = client.completions.create(
        model=model_id, prompt="Hello world", max_tokens=4, echo=True, logprobs=2, temperature=0,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    choice = response.choices[0]
    assert choice.text.startswith("Hello world")
    assert choice.logprobs is not None and len(choice.logprobs.tokens or []) == 4
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs or [])


def test_completion_greedy_matches_stream(client: openai.OpenAI, model_id: str) -> None:
    kwargs = dict(model=model_id, prompt="The sky is", max_tokens=16, temperature=0, extra_body={"ignore_eos": True})
    whole = client.completions.create(**kwargs).choices[0].text  # type: ignore[arg-type]
    streamed = "".join(c.choices[0].text for c in client.completions.create(**kwargs, stream=True) if c.choices)  # type: ignore[arg-type]
    assert streamed == whole


@pytest.mark.parametrize("extra", [{"suffix": "x"}, {"best_of": 2}])
def test_unsupported_completion_parameters_are_400(client: openai.OpenAI, model_id: str, extra: dict) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model_id, prompt="x", max_tokens=2, extra_body=extra)
    assert next(iter(extra)) in info.value.message


def test_tokenize_and_detokenize_round_trip(torch_server: ServerProcess, tiny_model_dir) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "Hello 你好 <think>"
    body = requests.post(f"{torch_server.url}/tokenize", json={"prompt": text}, timeout=30).json()
    assert body["tokens"] == tokenizer.encode(text) and body["count"] == len(body["tokens"])
    back = requests.post(f"{torch_server.url}/detokenize", json={"tokens": body["tokens"]}, timeout=30).json()
    assert back == {"prompt": text}
    bad = requests.post(f"{torch_server.url}/detokenize", json={"tokens": [10**9]}, timeout=30)
    assert bad.status_code == 422


def test_generate_stream_sends_deltas_then_finish(torch_server: ServerProcess) -> None:
    body = {"prompt": "Hi", "max_length": 6, "temperature": 0, "stream": True, "num_return_sequences": 2, "ignore_eos": True}
    events = list(sse_events(f"{torch_server.url}/generate", body))
    assert events[-1] == "[DONE]"
    finals = [e for e in events[:-1] if "finish_reason" in e]
    assert sorted(e["index"] for e in finals) == [0, 1]
    assert all(e["finish_reason"] == "length" and e["completion_tokens"] == 6 for e in finals)
    plain = requests.post(f"{torch_server.url}/generate", json={**body, "stream": False}, timeout=60).json()
    for index in (0, 1):
        text = "".join(e["text"] for e in events[:-1] if e.get("index") == index and "text" in e)
        assert text == plain["generated_texts"][index]


def test_completion_prompts_run_together(client: openai.OpenAI, model_id: str, torch_server: ServerProcess) -> None:
    # A list of prompts is submitted at once, so its sequences share engine steps: while the request runs, the
    # engine holds all three (one after another, it would never hold more than one).
    import threading
    import time

    from tests.server.engine_gauges import engine_gauges

    results: list[object] = []

    def send() -> None:
        try:
            results.append(client.with_options(timeout=600).completions.create(
                model=model_id, prompt=["a", "b", "c"], max_tokens=100, extra_body={"ignore_eos": True}
            ))  # fmt: skip
        except Exception as exc:
            results.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    seen = 0.0
    while sender.is_alive():
        seen = max(seen, engine_gauges(torch_server)["running"])
        time.sleep(0.05)
    sender.join()
    assert isinstance(results[0], openai.types.Completion), results[0]
    assert len(results[0].choices) == 3
    assert seen == 3
