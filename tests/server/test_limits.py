"""Every request limit is a clear 4xx naming the field, on the real server (README "Limits and security")."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import requests

from qwen3_api.server import limits
from tests.conftest import ServerProcess


@pytest.fixture(scope="module")
def served(tiny_model_dir, server_pool) -> ServerProcess:  # type: ignore[no-untyped-def]
    return server_pool.get(str(tiny_model_dir), "--backend", "torch")


@pytest.fixture(scope="module")
def model_id(served: ServerProcess) -> str:
    return str(requests.get(f"{served.url}/v1/models", timeout=30).json()["data"][0]["id"])


def openai_error(served: ServerProcess, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = requests.post(f"{served.url}{path}", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    return error


def chat(model_id: str, **fields: Any) -> dict[str, Any]:
    return {"model": model_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **fields}


def test_stop_strings_are_limited_in_number_and_length(served: ServerProcess, model_id: str) -> None:
    ok = chat(model_id, stop=["x" * limits.MAX_STOP_STRING_CHARS] * limits.MAX_STOP_STRINGS)
    assert requests.post(f"{served.url}/v1/chat/completions", json=ok, timeout=60).status_code == 200
    error = openai_error(served, "/v1/chat/completions", chat(model_id, stop=["a"] * (limits.MAX_STOP_STRINGS + 1)))
    assert error["param"] == "stop" and str(limits.MAX_STOP_STRINGS) in error["message"]
    long = "x" * (limits.MAX_STOP_STRING_CHARS + 1)
    error = openai_error(served, "/v1/completions", {"model": model_id, "prompt": "hi", "stop": long})
    assert error["param"] == "stop" and str(limits.MAX_STOP_STRING_CHARS) in error["message"]


def test_tools_and_messages_are_limited(served: ServerProcess, model_id: str) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    error = openai_error(served, "/v1/chat/completions", chat(model_id, tools=[tool] * (limits.MAX_TOOLS + 1)))
    assert error["param"] == "tools" and str(limits.MAX_TOOLS) in error["message"]
    messages = [{"role": "user", "content": "hi"}] * (limits.MAX_MESSAGES + 1)
    error = openai_error(served, "/v1/chat/completions", chat(model_id, messages=messages))
    assert error["param"] == "messages" and str(limits.MAX_MESSAGES) in error["message"]


def test_json_schema_size_is_limited(served: ServerProcess, model_id: str) -> None:
    properties = {f"p{i}": {"type": "string", "description": "d" * 60} for i in range(1000)}
    schema = {"type": "object", "properties": properties}
    assert len(json.dumps(schema)) > limits.MAX_JSON_SCHEMA_BYTES
    response_format = {"type": "json_schema", "json_schema": {"name": "big", "schema": schema}}
    error = openai_error(served, "/v1/chat/completions", chat(model_id, response_format=response_format))
    assert error["param"] == "response_format.json_schema.schema"
    assert str(limits.MAX_JSON_SCHEMA_BYTES) in error["message"]
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    error = openai_error(served, "/v1/chat/completions", chat(model_id, tools=[tool]))
    assert error["param"] == "tools.0.function.parameters"


def test_grammar_compile_time_is_bounded(hardened: ServerProcess, authed: requests.Session) -> None:
    """The hardened server allows 1 ms (--grammar-compile-timeout): a 40 KiB schema takes longer -> 400."""
    properties = {f"p{i}": {"type": "string", "pattern": "[a-z]{3,40}@[a-z]{2,10}"} for i in range(600)}
    schema = {"type": "object", "properties": properties, "required": list(properties)}
    model = authed.get(f"{hardened.url}/v1/models", timeout=30).json()["data"][0]["id"]
    response_format = {"type": "json_schema", "json_schema": {"name": "many", "schema": schema}}
    response = authed.post(f"{hardened.url}/v1/chat/completions", json=chat(model, response_format=response_format),
                           timeout=60)  # fmt: skip
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "response_format" and "did not compile within 0.001 s" in error["message"]


@pytest.mark.parametrize("key", ["05", " 5", "+5", "-5", "5.0", "٥"])
def test_logit_bias_keys_must_be_canonical_integers(served: ServerProcess, model_id: str, key: str) -> None:
    error = openai_error(served, "/v1/completions", {"model": model_id, "prompt": "hi", "logit_bias": {key: 1}})
    assert error["param"] == "logit_bias" and repr(key) in error["message"]


def test_logit_bias_entries_are_limited(served: ServerProcess, model_id: str) -> None:
    ok = {"model": model_id, "prompt": "hi", "max_tokens": 1, "logit_bias": {"5": 100, "6": -100}}
    assert requests.post(f"{served.url}/v1/completions", json=ok, timeout=60).status_code == 200
    bias = {str(i): 1.0 for i in range(limits.MAX_LOGIT_BIAS_ENTRIES + 1)}
    error = openai_error(served, "/v1/completions", {"model": model_id, "prompt": "hi", "logit_bias": bias})
    assert error["param"] == "logit_bias" and str(limits.MAX_LOGIT_BIAS_ENTRIES) in error["message"]


@pytest.mark.parametrize("seed", [-1, 2**63, 2**64 - 1])
def test_seed_out_of_range_is_refused_on_both_apis(served: ServerProcess, model_id: str, seed: int) -> None:
    error = openai_error(served, "/v1/completions", {"model": model_id, "prompt": "hi", "seed": seed})
    assert error["param"] == "seed"
    response = requests.post(f"{served.url}/generate", json={"prompt": "hi", "seed": seed}, timeout=60)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "seed"]


def test_largest_seed_is_accepted(served: ServerProcess, model_id: str) -> None:
    body = {"model": model_id, "prompt": "hi", "max_tokens": 2, "seed": limits.MAX_SEED, "n": 2}
    assert requests.post(f"{served.url}/v1/completions", json=body, timeout=60).status_code == 200
    native = {"prompt": "hi", "max_length": 2, "seed": limits.MAX_SEED, "num_return_sequences": 2}
    assert requests.post(f"{served.url}/generate", json=native, timeout=60).status_code == 200


def test_chat_template_kwargs_allow_only_enable_thinking(served: ServerProcess, model_id: str) -> None:
    for key in ("chat_template", "add_generation_prompt", "messages"):
        error = openai_error(served, "/v1/chat/completions", chat(model_id, chat_template_kwargs={key: "x"}))
        assert error["param"] == "chat_template_kwargs" and repr(key) in error["message"]
    ok = chat(model_id, chat_template_kwargs={"enable_thinking": False})
    assert requests.post(f"{served.url}/v1/chat/completions", json=ok, timeout=60).status_code == 200


@pytest.mark.parametrize("value", [5e-324, 1e-30, 0.0])
def test_tiny_repetition_penalty_is_a_400_not_a_500(served: ServerProcess, model_id: str, value: float) -> None:
    body = {"model": model_id, "prompt": "hi", "max_tokens": 4, "repetition_penalty": value}
    error = openai_error(served, "/v1/completions", body)
    assert error["param"] == "repetition_penalty"


def test_smallest_repetition_penalty_generates(served: ServerProcess, model_id: str) -> None:
    body = {"model": model_id, "prompt": "hi hi hi", "max_tokens": 4, "temperature": 1.0,
            "repetition_penalty": limits.MIN_REPETITION_PENALTY}  # fmt: skip
    response = requests.post(f"{served.url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text


def raw_exchange(served: ServerProcess, requests_bytes: list[bytes]) -> list[bytes]:
    """Send each request on ONE connection and read each answer (Content-Length framed): keep-alive must hold."""
    host, port = served.url.removeprefix("http://").split(":")
    answers = []
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        reader = sock.makefile("rb")
        for raw in requests_bytes:
            sock.sendall(raw)
            status_line = reader.readline()
            headers = {}
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = reader.read(int(headers.get("content-length", "0")))
            answers.append(status_line + body)
    return answers


def post_bytes(path: str, payload: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload


@pytest.mark.parametrize("path", ["/generate", "/v1/completions", "/v1/chat/completions"])
def test_lone_surrogate_is_a_json_4xx_and_keeps_the_connection(served: ServerProcess, model_id: str, path: str) -> None:
    bodies = {
        "/generate": '{"prompt": "\\ud800"}',
        "/v1/completions": '{"model": "MODEL", "prompt": "a\\udfff b", "max_tokens": 1}',
        "/v1/chat/completions": '{"model": "MODEL", "messages": [{"role": "user", "content": "\\ud800"}]}',
    }
    follow_up = json.dumps({"prompt": "hi", "max_length": 2}).encode()
    first, second = raw_exchange(served, [post_bytes(path, bodies[path].replace("MODEL", model_id).encode()), post_bytes("/generate", follow_up)])
    status, _, body = first.partition(b"\r\n")
    expected = b" 422 " if path == "/generate" else b" 400 "
    assert expected in status, first
    payload = json.loads(body)
    if path == "/generate":
        assert payload["detail"][0]["loc"] == ["body", "prompt"]
    else:
        assert payload["error"]["param"] in ("prompt", "messages[0].content")
        assert "surrogate" in payload["error"]["message"]
    assert b" 200 " in second.partition(b"\r\n")[0], second  # the same connection still serves


def test_body_over_the_limit_is_413_before_parsing(served: ServerProcess) -> None:
    size = 8 * 1024 * 1024 + 1  # the default --max-request-bytes, plus one
    body = b'{"prompt": "' + b"a" * (size - 14) + b'"}'
    response = requests.post(f"{served.url}/generate", data=body, timeout=60,
                             headers={"Content-Type": "application/json"})  # fmt: skip
    assert response.status_code == 413
    assert "8388608" in response.json()["detail"]
    response = requests.post(f"{served.url}/v1/completions", data=body, timeout=60,
                             headers={"Content-Type": "application/json"})  # fmt: skip
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_chunked_body_over_the_limit_is_413(served: ServerProcess) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"prompt": "'
        for _ in range(9):
            yield b"a" * (1024 * 1024)
        yield b'"}'

    response = requests.post(f"{served.url}/generate", data=chunks(), timeout=60,
                             headers={"Content-Type": "application/json"})  # fmt: skip
    assert response.status_code == 413
    assert response.json() == {"detail": "the request body is larger than this server's limit of 8388608 bytes"}
