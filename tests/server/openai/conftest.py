"""Clients of the official openai SDK pointed at the live server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import requests

from tests.conftest import ServerProcess


@pytest.fixture(scope="session")
def client(torch_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{torch_server.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def model_id(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def sse_events(url: str, body: dict[str, Any]) -> Iterator[Any]:
    """The raw SSE payloads of a streamed POST, parsed ([DONE] as the string "[DONE]")."""
    with requests.post(url, json=body, stream=True, timeout=120) as response:
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines(decode_unicode=True):
            if not line:
                continue
            assert line.startswith("data: "), line
            payload = line[len("data: ") :]
            yield payload if payload == "[DONE]" else json.loads(payload)


@pytest.fixture(scope="session")
def thinking_client(opened_think_model_dir, server_pool):  # type: ignore[no-untyped-def]
    server = server_pool.get(str(opened_think_model_dir), "--backend", "torch")
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
