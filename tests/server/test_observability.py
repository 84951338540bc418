"""Request ids, the access log (JSON lines) and the latency metrics, seen from outside the server process."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest
import requests
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from qwen3_api.config import Settings
from qwen3_api.engine.async_engine import AsyncEngine
from qwen3_api.engine.tokenizer import Tokenizer
from qwen3_api.server.app import create_app
from tests.conftest import ServerProcess
from tests.server.test_app_lifecycle import BrokenCore


@pytest.fixture(scope="module")
def json_logged(hardened: ServerProcess) -> ServerProcess:
    """The hardened server: --log-format json (and API keys: requests go through `authed`)."""
    return hardened


def log_lines(server: ServerProcess) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]


def access_entry(server: ServerProcess, request_id: str) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        entries = [e for e in log_lines(server) if e["logger"] == "qwen3_api.access" and e["request_id"] == request_id]
        if entries:
            assert len(entries) == 1  # one line per request
            return entries[0]
        time.sleep(0.1)
    raise AssertionError(f"no access-log line for {request_id}")


def test_request_id_is_echoed_or_generated(json_logged: ServerProcess, authed: requests.Session) -> None:
    given = authed.get(f"{json_logged.url}/health", headers={"X-Request-Id": "client-id.42"}, timeout=30)
    assert given.headers["X-Request-Id"] == "client-id.42"
    for insane in ("has space", "x" * 200, "semi;colon"):
        response = authed.get(f"{json_logged.url}/health", headers={"X-Request-Id": insane}, timeout=30)
        assert response.headers["X-Request-Id"] != insane and len(response.headers["X-Request-Id"]) == 32
    error = authed.post(f"{json_logged.url}/generate", json={"prompt": ""}, timeout=30)
    assert error.status_code == 422 and len(error.headers["X-Request-Id"]) == 32  # errors carry one too


def test_json_access_log_line_of_a_generation(json_logged: ServerProcess, authed: requests.Session) -> None:
    body = {"prompt": "Tell me a story.", "max_length": 5, "ignore_eos": True, "stream": True}
    with authed.post(f"{json_logged.url}/generate", json=body, headers={"X-Request-Id": "story-1"}, stream=True,
                       timeout=60) as response:  # fmt: skip
        assert response.headers["X-Request-Id"] == "story-1"
        events = [line for line in response.iter_lines() if line]
    final = json.loads(events[-2].removeprefix(b"data: "))
    entry = access_entry(json_logged, "story-1")
    assert entry["route"] == "/generate" and entry["status"] == 200 and entry["method"] == "POST"
    assert entry["prompt_tokens"] == final["prompt_tokens"] and entry["completion_tokens"] == 5
    assert entry["finish_reason"] == "length" and entry["cached_tokens"] >= 0
    assert 0 < entry["ttft_s"] <= entry["e2e_s"]
    assert 0 <= entry["queue_s"] < entry["ttft_s"]


def test_lines_outside_requests_have_no_id(json_logged: ServerProcess, authed: requests.Session) -> None:
    startup = [line for line in log_lines(json_logged) if "ready: serving" in line["message"]]
    assert startup and startup[0]["request_id"] == "-"


def scrape(server: ServerProcess, authed: requests.Session) -> dict[str, float]:
    text = authed.get(f"{server.url}/metrics", timeout=10).text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels
            or set(s.labels) == {"le"} and s.labels["le"] == "+Inf"}  # fmt: skip


def test_latency_histograms_and_token_counters(json_logged: ServerProcess, authed: requests.Session) -> None:
    before = scrape(json_logged, authed)
    body = {"prompt": "Count.", "max_length": 4, "ignore_eos": True}
    assert authed.post(f"{json_logged.url}/generate", json=body, timeout=60).status_code == 200
    after = scrape(json_logged, authed)
    for name in ("qwen3_api_time_to_first_token_seconds", "qwen3_api_time_per_output_token_seconds",
                 "qwen3_api_e2e_request_latency_seconds", "qwen3_api_queue_time_seconds"):  # fmt: skip
        assert after[f"{name}_count"] - before.get(f"{name}_count", 0) == 1, name
        assert after[f"{name}_sum"] > before.get(f"{name}_sum", 0)
    assert after["qwen3_api_generation_tokens_total"] - before.get("qwen3_api_generation_tokens_total", 0) == 4
    assert after["qwen3_api_prompt_tokens_total"] > before.get("qwen3_api_prompt_tokens_total", 0)
    # A short prompt is computed in one step, which samples the first token; three decode-only steps follow.
    grew = {name: after[f"qwen3_api_engine_{name}_total"] - before[f"qwen3_api_engine_{name}_total"]
            for name in ("steps", "decode_steps", "step_seconds", "forward_seconds", "decode_step_seconds",
                         "output_seconds")}  # fmt: skip
    assert grew["steps"] == 4 and grew["decode_steps"] == 3, grew
    assert 0 < grew["forward_seconds"] < grew["step_seconds"] and 0 < grew["decode_step_seconds"] < grew["step_seconds"]
    assert grew["output_seconds"] > 0
    text = authed.get(f"{json_logged.url}/metrics", timeout=10).text
    for counter in ("prefix_hit_tokens", "prefix_queried_tokens", "preemptions"):  # monotonic: counters
        assert re.search(rf"^# TYPE qwen3_api_engine_{counter}(_total)? counter$", text, re.M), counter
    assert "# TYPE qwen3_api_engine_running gauge" in text


class ExplodingTokenizer(Tokenizer):
    """A tokenizer that fails unexpectedly, with a local path in its error, standing in for any bug."""

    def prompt_token_ids(self, prompt: str, raw: bool = False) -> list[int]:
        raise RuntimeError("cannot open /home/secret/model/tokenizer.json")


def test_unexpected_exception_is_a_json_500_without_internals(tiny_model_dir: Path) -> None:
    def loader(settings: Settings) -> AsyncEngine:
        return AsyncEngine(BrokenCore(), ExplodingTokenizer(tiny_model_dir), "exploding")

    with TestClient(create_app(Settings(model="exploding"), loader=loader)) as client:
        for _ in range(200):
            if client.get("/health").status_code == 200:
                break
            threading.Event().wait(0.05)
        response = client.post("/generate", json={"prompt": "hi"})
        assert response.status_code == 500
        assert response.json()["detail"].startswith("Internal server error")
        assert "/home/secret" not in response.text and "RuntimeError" not in response.text
        assert response.headers["X-Request-Id"]
        assert client.get("/health").status_code == 200  # and the server goes on
