"""Overload: past --max-queued-requests every generation request, streamed or not, gets 503 + Retry-After at once,
before any byte of a stream; the slot is free again once the request that held it ends."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests

from tests.conftest import ServerProcess

LONG = {"prompt": "Go on forever.", "max_length": 1500, "ignore_eos": True, "temperature": 1.0, "stream": True}


@pytest.fixture(scope="module")
def full(hardened: ServerProcess, authed: requests.Session) -> ServerProcess:
    """The hardened server: --max-queued-requests 1."""
    return hardened


def bodies(model: str) -> list[tuple[str, dict[str, Any]]]:
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    completion = {"model": model, "prompt": "hi", "max_tokens": 2}
    native = {"prompt": "hi", "max_length": 2}
    return [
        (path, {**body, "stream": stream})
        for path, body in (("/generate", native), ("/v1/chat/completions", chat), ("/v1/completions", completion))
        for stream in (False, True)
    ]


def test_requests_past_the_limit_get_503_before_any_stream_byte(full: ServerProcess, authed: requests.Session) -> None:
    model = authed.get(f"{full.url}/v1/models", timeout=30).json()["data"][0]["id"]
    with authed.post(f"{full.url}/generate", json=LONG, stream=True, timeout=180) as holder:
        assert holder.status_code == 200
        lines = holder.iter_lines()  # kept: dropping the iterator would close the connection
        next(lines)  # it is generating: the one slot is taken
        for path, body in bodies(model):
            response = authed.post(f"{full.url}{path}", json=body, timeout=30)
            assert response.status_code == 503, (path, body["stream"], response.text)
            assert response.headers["Retry-After"] == "1"
            assert response.headers["content-type"] == "application/json"  # no event stream was started
            text = response.text
            assert "limit of 1 unfinished requests" in text
            if path.startswith("/v1"):
                assert response.json()["error"]["type"] == "service_unavailable"
        refused = authed.post(f"{full.url}/generate", json={"prompt": "hi"}, headers={"X-Request-Id": "over-1"})
        assert refused.status_code == 503 and refused.headers["X-Request-Id"] == "over-1"
        assert next(line for line in lines if line).startswith(b"data: {")  # the holder is still being served
    # Every log line of the refused request carries its id: the error mapping's warning and the access line.
    mine = [json.loads(line) for line in full.log().splitlines() if '"over-1"' in line]
    assert {entry["logger"] for entry in mine} == {"qwen3_api.server.errors", "qwen3_api.access"}, mine
    assert all(entry["request_id"] == "over-1" for entry in mine)
    deadline = time.monotonic() + 30  # the holder hung up: its slot comes back
    while time.monotonic() < deadline:
        response = authed.post(f"{full.url}/generate", json={"prompt": "hi", "max_length": 2}, timeout=30)
        if response.status_code == 200:
            break
        time.sleep(0.2)
    assert response.status_code == 200, response.text
    for path, body in bodies(model):
        assert authed.post(f"{full.url}{path}", json=body, timeout=60).status_code == 200, path
