"""--request-timeout: past it the engine aborts the request (its KV freed), 504 or an error event then [DONE]."""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.conftest import ServerPool, ServerProcess
from tests.server.engine_gauges import is_idle, sse_events, wait_for

TIMEOUT = 2
# 40 ms a step: the 1000 tokens asked for below would take 40 s and more.
SLOW_MODEL = "test:tiny:delay_ms=40"
LONG = {"max_tokens": 1000, "ignore_eos": True, "temperature": 1.0}


@pytest.fixture(scope="module")
def deadline_server(server_pool: ServerPool) -> ServerProcess:
    return server_pool.get(SLOW_MODEL, "--backend", "torch", "--request-timeout", str(TIMEOUT))


def model_of(server: ServerProcess) -> str:
    return str(requests.get(f"{server.url}/v1/models", timeout=10).json()["data"][0]["id"])


def post(server: ServerProcess, path: str, body: dict, stream: bool = False) -> tuple[requests.Response, float]:
    started = time.monotonic()
    return requests.post(f"{server.url}{path}", json=body, stream=stream, timeout=60), started


def assert_freed_at_once(server: ServerProcess) -> None:
    gauges = wait_for(server, is_idle, 1.5)
    assert is_idle(gauges), f"the timed-out request still holds engine resources: {gauges}"


def test_native_non_streamed_is_504(deadline_server: ServerProcess) -> None:
    body = {"prompt": "Go on forever.", "max_length": 1000, "ignore_eos": True, "temperature": 1.0}
    response, started = post(deadline_server, "/generate", body)
    elapsed = time.monotonic() - started
    assert response.status_code == 504, response.text
    assert response.json() == {"detail": f"Request timed out after {TIMEOUT} s"}
    assert TIMEOUT <= elapsed < TIMEOUT + 5, elapsed
    assert_freed_at_once(deadline_server)


def test_native_stream_ends_with_an_error_event_then_done(deadline_server: ServerProcess) -> None:
    body = {"prompt": "Go on forever.", "max_length": 1000, "ignore_eos": True, "temperature": 1.0, "stream": True}
    response, _ = post(deadline_server, "/generate", body, stream=True)
    assert response.status_code == 200
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2]) == {"error": f"Request timed out after {TIMEOUT} s"}
    assert any("text" in json.loads(e) for e in events[:-2]), "no token was streamed before the deadline"
    assert_freed_at_once(deadline_server)


def test_openai_non_streamed_is_504_with_code_timeout(deadline_server: ServerProcess) -> None:
    body = {"model": model_of(deadline_server), "prompt": "Go on forever.", **LONG}
    response, _ = post(deadline_server, "/v1/completions", body)
    assert response.status_code == 504, response.text
    error = response.json()["error"]
    assert error["code"] == "timeout" and error["message"] == f"Request timed out after {TIMEOUT} s"
    assert_freed_at_once(deadline_server)


def test_openai_chat_stream_ends_with_an_error_event_then_done(deadline_server: ServerProcess) -> None:
    messages = [{"role": "user", "content": "Go on forever."}]
    body = {"model": model_of(deadline_server), "messages": messages, "stream": True, **LONG}
    response, _ = post(deadline_server, "/v1/chat/completions", body, stream=True)
    assert response.status_code == 200
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "timeout"
    assert_freed_at_once(deadline_server)
