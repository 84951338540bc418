"""Requests that share a long prefix, for the prefix-cache-directory tests of both backends."""

from __future__ import annotations

from typing import Any

import requests

from tests.conftest import ServerProcess

SHARED = "You are a careful assistant. Follow the house rules. " * 12  # about 130 tokens of shared prefix


def completion(server: ServerProcess, tail: str) -> dict[str, Any]:
    body = {"model": server.model, "prompt": SHARED + tail, "max_tokens": 4, "temperature": 0, "logprobs": 5}
    response = requests.post(f"{server.url}/v1/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def cached(result: dict[str, Any]) -> int:
    return int(result["usage"]["prompt_tokens_details"]["cached_tokens"])
