"""The original contract, end to end against the real server process."""

from __future__ import annotations

import json

import pytest
import requests
from transformers import AutoTokenizer

import qwen3_api
from tests.conftest import MAX_MODEL_LEN, ServerProcess


def post(server: ServerProcess, body: object, raw: str | None = None) -> requests.Response:
    if raw is not None:
        return requests.post(f"{server.url}/generate", data=raw, headers={"content-type": "application/json"}, timeout=120)
    return requests.post(f"{server.url}/generate", json=body, timeout=120)


def test_root_names_service_version_and_model(server: ServerProcess) -> None:
    body = requests.get(f"{server.url}/", timeout=10).json()
    assert body == {"name": "Qwen3-4B API", "version": qwen3_api.__version__, "status": "active", "model": server.model}


def test_health_is_healthy_once_loaded(server: ServerProcess) -> None:
    response = requests.get(f"{server.url}/health", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": "healthy"}


def test_generate_fills_and_echoes_defaults(server: ServerProcess) -> None:
    response = post(server, {"prompt": "Write a function that adds two numbers."})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["parameters"] == {
        "prompt": "Write a function that adds two numbers.",
        "max_length": 512,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 50,
        "num_return_sequences": 1,
    }
    assert len(body["generated_texts"]) == 1 and isinstance(body["generated_texts"][0], str)


def test_generate_echoes_the_values_used(server: ServerProcess) -> None:
    body = {"prompt": "Hi", "max_length": 3, "temperature": 1, "top_p": 0.5, "top_k": 0, "num_return_sequences": 2}
    response = post(server, body)
    assert response.status_code == 200, response.text
    echoed = response.json()["parameters"]
    assert echoed == {**body, "temperature": 1.0}
    assert isinstance(echoed["temperature"], float)


def test_max_length_counts_generated_tokens_only(server: ServerProcess, tiny_model_dir) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    body = post(server, {"prompt": "Count to ten. " * 20, "max_length": 5, "temperature": 0}).json()
    text = body["generated_texts"][0]
    assert 0 < len(tokenizer.encode(text)) <= 6  # re-encoding can merge differently by one token at most


def test_num_return_sequences_gives_that_many_texts(server: ServerProcess) -> None:
    body = post(server, {"prompt": "Hello", "max_length": 8, "num_return_sequences": 3}).json()
    assert len(body["generated_texts"]) == 3
    assert body["parameters"]["num_return_sequences"] == 3


def test_greedy_is_deterministic_and_plain_prompt_uses_chat_template(server: ServerProcess) -> None:
    plain = post(server, {"prompt": "Tell me a story.", "max_length": 12, "temperature": 0}).json()
    again = requests.post(  # computed again, not answered by the response cache
        f"{server.url}/generate", json={"prompt": "Tell me a story.", "max_length": 12, "temperature": 0},
        headers={"Cache-Control": "no-cache"}, timeout=120,
    ).json()
    chatml = (
        "<|im_start|>user\nTell me a story.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    verbatim = post(server, {"prompt": chatml, "max_length": 12, "temperature": 0}).json()
    raw = post(server, {"prompt": "Tell me a story.", "max_length": 12, "temperature": 0, "raw": True}).json()
    assert plain["generated_texts"] == again["generated_texts"]
    assert plain["generated_texts"] == verbatim["generated_texts"]
    assert raw["generated_texts"] != plain["generated_texts"]


def test_generated_text_is_new_text_without_special_tokens(server: ServerProcess) -> None:
    body = post(server, {"prompt": "Say hi", "max_length": 40, "temperature": 1.0, "top_k": 0, "top_p": 1.0}).json()
    for text in body["generated_texts"]:
        for marker in ("<|im_end|>", "<|endoftext|>", "<|im_start|>"):
            assert marker not in text
        assert "Say hi" not in text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x", "temperature": -0.1}, "temperature"),
        ({"prompt": "x", "temperature": 2.5}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "top_p": 1.5}, "top_p"),
        ({"prompt": "x", "top_k": -1}, "top_k"),
        ({"prompt": "x", "max_length": 0}, "max_length"),
        ({"prompt": "x", "max_length": "12"}, "max_length"),
        ({"prompt": "x", "max_length": MAX_MODEL_LEN + 1}, "max_length"),
        ({"prompt": "x", "num_return_sequences": 0}, "num_return_sequences"),
        ({"prompt": "x", "num_return_sequences": 9}, "num_return_sequences"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": 42}, "prompt"),
        ({}, "prompt"),
        ({"prompt": "x", "frobnicate": 1}, "frobnicate"),
    ],
)
def test_invalid_input_is_422_naming_the_field(server: ServerProcess, body: dict, field: str) -> None:
    response = post(server, body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(field in [str(part) for part in error["loc"]] for error in detail), detail


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_422(server: ServerProcess, value: str) -> None:
    response = post(server, None, raw=f'{{"prompt": "x", "temperature": {value}}}')
    assert response.status_code == 422, response.text
    assert any("temperature" in error["loc"] for error in response.json()["detail"])


def test_malformed_json_is_422(server: ServerProcess) -> None:
    assert post(server, None, raw='{"prompt": "x",').status_code == 422


def test_context_overflow_names_both_numbers(server: ServerProcess) -> None:
    response = post(server, {"prompt": "word " * 300, "max_length": MAX_MODEL_LEN - 100})
    assert response.status_code == 422
    message = json.dumps(response.json())
    assert str(MAX_MODEL_LEN) in message and "max_length" in message


def test_bad_request_does_not_disturb_a_good_one(server: ServerProcess) -> None:
    assert post(server, {"prompt": "x", "top_p": 7}).status_code == 422
    good = post(server, {"prompt": "Hi", "max_length": 4, "temperature": 0})
    assert good.status_code == 200 and len(good.json()["generated_texts"]) == 1
