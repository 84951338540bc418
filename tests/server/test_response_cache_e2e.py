"""The response cache as a client sees it: X-Cache headers, identical answers, dedupe, bounds (real servers)."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from fastapi.testclient import TestClient

from qwen3_api.config import Settings
from qwen3_api.engine.async_engine import AsyncEngine
from qwen3_api.engine.tokenizer import Tokenizer
from qwen3_api.server.app import create_app
from tests.conftest import ServerPool, ServerProcess
from tests.server.test_app_lifecycle import BrokenCore
from tests.server.test_metrics import scrape

SMALL_BUDGET_MB = 0.02  # 20 KiB: a handful of short answers
SHORT_TTL_S = 3


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, server_pool: ServerPool) -> ServerProcess:
    """The tiny model on our engine with the default cache (256 MiB, 1 hour)."""
    return server_pool.get(str(tiny_model_dir), "--backend", "torch")


@pytest.fixture(scope="module")
def small_server(tiny_model_dir: Path, server_pool: ServerPool) -> ServerProcess:
    return server_pool.get(
        str(tiny_model_dir), "--backend", "torch",
        "--response-cache-mb", str(SMALL_BUDGET_MB), "--response-cache-ttl", str(SHORT_TTL_S),
    )  # fmt: skip


def post(server: ServerProcess, path: str, body: dict[str, Any], **headers: str) -> requests.Response:
    response = requests.post(f"{server.url}{path}", json=body, headers=headers, timeout=120)
    assert response.status_code == 200, response.text
    return response


def events(server: ServerProcess, path: str, body: dict[str, Any]) -> tuple[str, list[Any]]:
    """X-Cache and the parsed SSE payloads of a streamed request."""
    with requests.post(f"{server.url}{path}", json={**body, "stream": True}, stream=True, timeout=120) as response:
        assert response.status_code == 200, response.text
        lines = [line[len("data: ") :] for line in response.iter_lines(decode_unicode=True) if line]
        return response.headers["x-cache"], [p if p == "[DONE]" else json.loads(p) for p in lines]


def model_id(server: ServerProcess) -> str:
    return str(requests.get(f"{server.url}/v1/models", timeout=10).json()["data"][0]["id"])


def without_ids(payloads: list[Any]) -> list[Any]:
    return [{k: v for k, v in p.items() if k not in ("id", "created", "usage")} if isinstance(p, dict) else p
            for p in payloads]  # fmt: skip


def greedy(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"prompt": prompt, "max_length": 12, "temperature": 0, **extra}


# ---- hits and misses, both APIs, streamed and not ----------------------------------------------------------------
def test_generate_greedy_miss_then_hit_and_stream_replays_the_same_events(server: ServerProcess) -> None:
    body = greedy("cache me: generate")
    first, again = post(server, "/generate", body), post(server, "/generate", body)
    assert (first.headers["x-cache"], again.headers["x-cache"]) == ("miss", "hit")
    assert first.json() == again.json()
    status, streamed = events(server, "/generate", greedy("cache me: generate stream"))
    status_again, replayed = events(server, "/generate", greedy("cache me: generate stream"))
    assert (status, status_again) == ("miss", "hit")
    assert replayed == streamed and streamed[-2]["finish_reason"] == "length"
    # a streamed request is answered from a non-streamed one's entry: the same engine output
    status, from_plain = events(server, "/generate", body)
    assert status == "hit"
    assert "".join(e.get("text", "") for e in from_plain[:-1]) == first.json()["generated_texts"][0]


def test_chat_hit_has_fresh_id_and_all_prompt_tokens_cached(server: ServerProcess) -> None:
    body = {"model": model_id(server), "messages": [{"role": "user", "content": "cache me: chat"}],
            "max_tokens": 8, "temperature": 0}  # fmt: skip
    first, again = post(server, "/v1/chat/completions", body), post(server, "/v1/chat/completions", body)
    assert (first.headers["x-cache"], again.headers["x-cache"]) == ("miss", "hit")
    a, b = first.json(), again.json()
    assert a["id"] != b["id"] and b["created"] >= a["created"]
    assert a["choices"] == b["choices"]
    assert b["usage"]["prompt_tokens_details"]["cached_tokens"] == b["usage"]["prompt_tokens"]
    assert {k: v for k, v in a["usage"].items() if k != "prompt_tokens_details"} == {
        k: v for k, v in b["usage"].items() if k != "prompt_tokens_details"
    }


def test_chat_stream_hit_replays_deltas_finish_and_usage(server: ServerProcess) -> None:
    body = {"model": model_id(server), "messages": [{"role": "user", "content": "cache me: chat stream"}],
            "max_tokens": 8, "temperature": 0, "stream_options": {"include_usage": True}}  # fmt: skip
    status, first = events(server, "/v1/chat/completions", body)
    status_again, again = events(server, "/v1/chat/completions", body)
    assert (status, status_again) == ("miss", "hit")
    assert without_ids(again) == without_ids(first)
    assert first[0]["id"] != again[0]["id"]
    usage, usage_again = first[-2]["usage"], again[-2]["usage"]
    assert usage_again["completion_tokens"] == usage["completion_tokens"] == 8
    assert usage_again["prompt_tokens_details"]["cached_tokens"] == usage_again["prompt_tokens"]


def test_completions_batch_hit_streamed_and_not(server: ServerProcess) -> None:
    body = {"model": model_id(server), "prompt": ["cache me: one", "cache me: two"], "max_tokens": 5,
            "temperature": 0, "logprobs": 2}  # fmt: skip
    first, again = post(server, "/v1/completions", body), post(server, "/v1/completions", body)
    assert (first.headers["x-cache"], again.headers["x-cache"]) == ("miss", "hit")
    assert first.json()["choices"] == again.json()["choices"]
    usage = again.json()["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"]
    streamed = {**body, "stream_options": {"include_usage": True}}
    _, stream_first = events(server, "/v1/completions", streamed)
    status, stream_again = events(server, "/v1/completions", streamed)
    assert status == "hit" and without_ids(stream_again) == without_ids(stream_first)


# ---- what changes the key ----------------------------------------------------------------------------------------
CHAT_VARIANTS: list[dict[str, Any]] = [
    {"max_tokens": 7},
    {"top_k": 5},
    {"top_p": 0.5},
    {"stop": ["zz"]},
    {"presence_penalty": 0.5},
    {"frequency_penalty": 0.5},
    {"repetition_penalty": 1.2},
    {"logit_bias": {"11": 3}},
    {"logprobs": True, "top_logprobs": 2},
    {"ignore_eos": True},
    {"seed": 5},
    {"response_format": {"type": "json_object"}},
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
     "tool_choice": "required"},
    {"tools": [{"type": "function", "function": {"name": "g", "parameters": {"type": "object"}}}]},
    {"enable_thinking": False},
    {"messages": [{"role": "user", "content": "cache me: variants!"}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "cache me: variants"}]},
]


def test_every_changed_field_is_a_miss(server: ServerProcess) -> None:
    base = {"model": model_id(server), "messages": [{"role": "user", "content": "cache me: variants"}],
            "max_tokens": 6, "temperature": 0}  # fmt: skip
    post(server, "/v1/chat/completions", base)
    assert post(server, "/v1/chat/completions", base).headers["x-cache"] == "hit"
    for variant in CHAT_VARIANTS:
        response = post(server, "/v1/chat/completions", {**base, **variant})
        assert response.headers["x-cache"] == "miss", variant
    # tools with tool_choice none reach neither the prompt nor the engine: the very same generation
    unused_tools = {"tools": CHAT_VARIANTS[12]["tools"], "tool_choice": "none"}
    assert post(server, "/v1/chat/completions", {**base, **unused_tools}).headers["x-cache"] == "hit"
    assert post(server, "/generate", greedy("cache me: top_k", top_k=5)).headers["x-cache"] == "miss"
    assert post(server, "/generate", greedy("cache me: top_k", top_k=6)).headers["x-cache"] == "miss"
    assert post(server, "/generate", greedy("cache me: top_k", top_k=6)).headers["x-cache"] == "hit"
    completion = {"model": model_id(server), "prompt": "cache me: echo", "max_tokens": 4, "temperature": 0}
    post(server, "/v1/completions", completion)
    echoed = post(server, "/v1/completions", {**completion, "echo": True})
    assert echoed.headers["x-cache"] == "miss" and echoed.json()["choices"][0]["text"].startswith("cache me: echo")
    # the same prompt ids on another route is another entry
    assert post(server, "/v1/completions", {**completion, "prompt": "cache me: top_k"}).headers["x-cache"] == "miss"


# ---- what is never cached ----------------------------------------------------------------------------------------
def test_sampling_without_seed_bypasses_and_seeded_hits(server: ServerProcess) -> None:
    unseeded = {"prompt": "cache me: sampled", "max_length": 8, "temperature": 1.0}
    assert [post(server, "/generate", unseeded).headers["x-cache"] for _ in range(2)] == ["bypass", "bypass"]
    seeded = {**unseeded, "seed": 11, "num_return_sequences": 2}
    first, again = post(server, "/generate", seeded), post(server, "/generate", seeded)
    assert (first.headers["x-cache"], again.headers["x-cache"]) == ("miss", "hit")
    assert first.json()["generated_texts"] == again.json()["generated_texts"]


def test_seeded_hits_on_both_backends(torch_server: ServerProcess) -> None:
    body = {"model": model_id(torch_server), "prompt": "cache me: any backend", "max_tokens": 6, "temperature": 0.9,
            "seed": 3}  # fmt: skip
    first, again = post(torch_server, "/v1/completions", body), post(torch_server, "/v1/completions", body)
    assert (first.headers["x-cache"], again.headers["x-cache"]) == ("miss", "hit")
    assert first.json()["choices"] == again.json()["choices"]


def test_budget_zero_turns_the_cache_off(tiny_model_dir: Path) -> None:
    settings = Settings(model=str(tiny_model_dir), backend="torch", response_cache_mb=0, max_model_len=256)
    with TestClient(create_app(settings)) as client:
        while client.get("/health").status_code != 200:
            time.sleep(0.05)
        statuses = [client.post("/generate", json=greedy("cache me: off")).headers["x-cache"] for _ in range(2)]
        assert statuses == ["bypass", "bypass"]
        assert "qwen3_api_response_cache_entries 0.0" in client.get("/metrics").text


def test_no_store_keeps_it_out_and_no_cache_refreshes(server: ServerProcess) -> None:
    body = greedy("cache me: no-store")
    assert post(server, "/generate", body, **{"Cache-Control": "no-store"}).headers["x-cache"] == "bypass"
    assert post(server, "/generate", body).headers["x-cache"] == "miss"  # no-store left nothing behind
    assert post(server, "/generate", body, **{"Cache-Control": "no-cache"}).headers["x-cache"] == "bypass"
    fresh = greedy("cache me: no-cache")
    assert post(server, "/generate", fresh, **{"Cache-Control": "no-cache"}).headers["x-cache"] == "bypass"
    assert post(server, "/generate", fresh).headers["x-cache"] == "hit"  # no-cache computed afresh and stored


def test_errors_are_not_cached(tiny_model_dir: Path) -> None:
    def loader(settings: Settings) -> AsyncEngine:
        return AsyncEngine(BrokenCore(), Tokenizer(tiny_model_dir), "broken")

    with TestClient(create_app(Settings(model="broken"), loader=loader)) as client:
        while client.get("/health").status_code != 200:
            time.sleep(0.05)
        for _ in range(2):  # the second one computes again: the failure was not stored
            response = client.post("/generate", json=greedy("cache me: failing engine"))
            assert (response.status_code, response.headers["x-cache"]) == (500, "miss")


# ---- in-flight dedupe --------------------------------------------------------------------------------------------
def test_identical_concurrent_requests_cost_one_generation(server: ServerProcess) -> None:
    body = greedy("cache me: eight at once", max_length=64, ignore_eos=True)
    before = scrape(server)
    post(server, "/generate", body, **{"Cache-Control": "no-store"})  # what one generation costs the engine
    queried = "qwen3_api_engine_prefix_queried_tokens_total[]"
    solo = scrape(server)[queried] - before[queried]
    before = scrape(server)
    barrier = threading.Barrier(8)
    results: list[requests.Response] = []

    def send() -> None:
        barrier.wait()
        results.append(requests.post(f"{server.url}/generate", json=body, timeout=120))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = scrape(server)
    assert sorted(r.headers["x-cache"] for r in results) == ["hit"] * 7 + ["miss"]
    assert len({json.dumps(r.json()) for r in results}) == 1
    delta = {k: after[k] - before.get(k, 0) for k in after if "response_cache" in k or "queried" in k}
    assert delta["qwen3_api_response_cache_hits_total[]"] == 7
    assert delta["qwen3_api_response_cache_misses_total[]"] == 1
    # the engine admitted one sequence: it looked up one prompt's tokens in its prefix cache, not eight
    assert delta[queried] == solo > 0


def _hang_up_after(server: ServerProcess, body: dict[str, Any], read_bytes: int, hang_up: threading.Event) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(
            b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload
        )
        received = b""
        while len(received) < read_bytes:
            received += sock.recv(read_bytes - len(received))
        hang_up.wait(60)


def wait_for(server: ServerProcess, metric: str, value: float, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while scrape(server)[metric] != value:
        assert time.monotonic() < deadline, f"{metric} never became {value}"
        time.sleep(0.02)


def test_first_client_leaving_does_not_strand_the_waiters(server: ServerProcess) -> None:
    body = greedy("cache me: the first one leaves", max_length=300, ignore_eos=True)
    hang_up = threading.Event()
    first = threading.Thread(target=_hang_up_after, args=(server, {**body, "stream": True}, 300, hang_up))
    first.start()
    waiters: list[requests.Response] = []
    threads = [threading.Thread(target=lambda: waiters.append(
        requests.post(f"{server.url}/generate", json=body, timeout=300))) for _ in range(2)]  # fmt: skip
    wait_for(server, "qwen3_api_unfinished_requests[]", 1)  # the first one streams
    for thread in threads:
        thread.start()
    wait_for(server, "qwen3_api_response_cache_waiting[]", 2)  # the others wait for it, not beside it
    hang_up.set()
    first.join()
    for thread in threads:
        thread.join()
    assert sorted(w.headers["x-cache"] for w in waiters) == ["hit", "miss"]  # one computed, one waited for it
    texts = {w.json()["generated_texts"][0] for w in waiters}
    assert len(texts) == 1
    again = post(server, "/generate", body)
    assert again.headers["x-cache"] == "hit" and again.json()["generated_texts"][0] in texts


def test_a_request_cut_short_by_its_client_is_not_stored(server: ServerProcess) -> None:
    body = greedy("cache me: cut short", max_length=300, ignore_eos=True, stream=True)
    before = scrape(server)
    hang_up = threading.Event()
    hang_up.set()
    _hang_up_after(server, body, 300, hang_up)
    wait_for(server, "qwen3_api_unfinished_requests[]", 0)
    after = scrape(server)
    assert after["qwen3_api_response_cache_misses_total[]"] == before["qwen3_api_response_cache_misses_total[]"] + 1
    assert after["qwen3_api_response_cache_entries[]"] == before["qwen3_api_response_cache_entries[]"]


# ---- bounds ------------------------------------------------------------------------------------------------------
def test_budget_eviction_keeps_bytes_within_budget(small_server: ServerProcess) -> None:
    budget = SMALL_BUDGET_MB * 2**20
    for i in range(30):
        assert post(small_server, "/generate", greedy(f"cache me: distinct {i}")).headers["x-cache"] == "miss"
        metrics = scrape(small_server)
        assert 0 < metrics["qwen3_api_response_cache_bytes[]"] <= budget
    assert metrics["qwen3_api_response_cache_entries[]"] < 30
    assert post(small_server, "/generate", greedy("cache me: distinct 29")).headers["x-cache"] == "hit"
    assert post(small_server, "/generate", greedy("cache me: distinct 0")).headers["x-cache"] == "miss"


def test_entries_expire_after_the_ttl(small_server: ServerProcess) -> None:
    body = greedy("cache me: ttl")
    assert post(small_server, "/generate", body).headers["x-cache"] == "miss"
    assert post(small_server, "/generate", body).headers["x-cache"] == "hit"
    time.sleep(SHORT_TTL_S + 0.5)
    assert post(small_server, "/generate", body).headers["x-cache"] == "miss"


def test_size_and_ttl_are_logged_at_start(small_server: ServerProcess) -> None:
    assert f"response cache: {SMALL_BUDGET_MB:g} MiB, TTL {SHORT_TTL_S:g} s" in small_server.log()
