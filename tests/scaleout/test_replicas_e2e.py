"""`qwen3-api serve --replicas 2` on Ray Serve, as clients see it: both APIs through the ingress, load spread,
prefix affinity across turns, and a replica killed mid-load (real processes, real Ray actors)."""

from __future__ import annotations

import json
import select
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import ServerProcess
from tests.scaleout.conftest import RayHead, replica_ids, wait_for_loaded_replicas

pytestmark = pytest.mark.slow

# Longest silence allowed on one response in the replica-kill test (a non-streamed request answers only at its end;
# 256 tokens of the tiny model take seconds): a request that hangs fails the test in about this long.
KILL_READ_TIMEOUT_S = 150

SYSTEM = "You are a careful assistant. Answer in one short paragraph and keep to the facts you are given."


def metric_samples(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{server.url}/metrics", timeout=90).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}  # fmt: skip


def post(server: ServerProcess, path: str, body: dict[str, Any], timeout: float = 180) -> requests.Response:
    return requests.post(f"{server.url}{path}", json=body, timeout=timeout)


def chat_turn(server: ServerProcess, messages: list[dict[str, str]]) -> tuple[str, dict[str, Any]]:
    response = post(server, "/v1/chat/completions", {"model": server.model, "messages": messages,
                                                     "max_tokens": 8, "temperature": 0})  # fmt: skip
    assert response.status_code == 200, response.text
    return response.headers["x-replica"], response.json()


def test_every_api_answers_through_the_ingress(replicated: ServerProcess) -> None:
    root = requests.get(f"{replicated.url}/", timeout=90)
    assert root.status_code == 200 and root.json()["status"] == "active"
    assert requests.get(f"{replicated.url}/health", timeout=90).json() == {"status": "healthy"}
    assert requests.get(f"{replicated.url}/live", timeout=90).status_code == 200
    generated = post(replicated, "/generate", {"prompt": "Write a haiku about rivers.", "max_length": 6})
    assert generated.status_code == 200 and len(generated.json()["generated_texts"]) == 1
    assert generated.headers["x-replica"] and generated.headers["x-request-id"]
    models = requests.get(f"{replicated.url}/v1/models", timeout=90).json()
    assert models["data"][0]["id"] == replicated.model
    _, completion = chat_turn(replicated, [{"role": "user", "content": "Hello!"}])
    assert completion["object"] == "chat.completion" and completion["usage"]["completion_tokens"] >= 1
    anthropic = post(replicated, "/v1/messages", {"model": replicated.model, "max_tokens": 4,
                                                  "messages": [{"role": "user", "content": "Hi"}]})  # fmt: skip
    assert anthropic.status_code == 200 and anthropic.json()["type"] == "message"
    # errors keep their shape and status
    bad = post(
        replicated,
        "/v1/chat/completions",
        {"model": replicated.model, "messages": [{"role": "user", "content": "x"}], "bogus": 1},
    )
    assert bad.status_code == 400 and "bogus" in bad.json()["error"]["message"]
    assert post(replicated, "/generate", {"prompt": ""}).status_code == 422


def test_streams_pass_through_unchanged(replicated: ServerProcess) -> None:
    body = {"model": replicated.model, "messages": [{"role": "user", "content": "Count to three."}], "max_tokens": 6,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    with requests.post(f"{replicated.url}/v1/chat/completions", json=body, stream=True, timeout=180) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines(decode_unicode=True) if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: ") :]) for line in lines[:-1]]
    assert chunks[-1]["usage"]["completion_tokens"] == 6
    with requests.post(f"{replicated.url}/generate", json={"prompt": "Hi", "max_length": 4, "stream": True},
                       stream=True, timeout=180) as response:  # fmt: skip
        native = [line for line in response.iter_lines(decode_unicode=True) if line]
    assert native[-1] == "data: [DONE]" and '"finish_reason"' in native[-2]


def test_distinct_requests_spread_over_both_replicas(replicated: ServerProcess) -> None:
    before = requests_by_replica(replicated)

    def one(i: int) -> str:
        response = post(replicated, "/generate", {"prompt": f"{i} distinct prompt number {i}", "max_length": 16})
        assert response.status_code == 200, response.text
        return response.headers["x-replica"]

    with ThreadPoolExecutor(8) as pool:
        used = Counter(pool.map(one, range(8)))
    assert len(used) == 2 and min(used.values()) >= 2, used
    after = requests_by_replica(replicated)  # the replicas' own counters agree with the headers
    assert {r: after.get(r, 0) - before.get(r, 0) for r in used} == dict(used)


def test_second_turn_lands_on_the_replica_of_the_first_and_hits_its_cache(replicated: ServerProcess) -> None:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is a KV cache?"}]
    first_replica, first = chat_turn(replicated, messages)
    messages += [first["choices"][0]["message"], {"role": "user", "content": "And why does it help?"}]
    second_replica, second = chat_turn(replicated, messages)
    assert second_replica == first_replica
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] > 0


def test_eight_conversations_alternating_turns_each_stay_on_their_replica(replicated: ServerProcess) -> None:
    conversations = [[{"role": "system", "content": f"Conversation {i}. {SYSTEM}"},
                      {"role": "user", "content": f"Tell me something about the number {i}."}]
                     for i in range(8)]  # fmt: skip
    placed: list[list[str]] = [[] for _ in conversations]
    for _turn in range(3):
        for i, messages in enumerate(conversations):
            replica, answer = chat_turn(replicated, messages)
            placed[i].append(replica)
            messages += [answer["choices"][0]["message"], {"role": "user", "content": "Go on."}]
    for i, replicas in enumerate(placed):
        assert len(set(replicas)) == 1, (i, replicas)
    assert len({replicas[0] for replicas in placed}) == 2  # and the conversations use both replicas


def test_identical_deterministic_requests_share_a_replica_and_its_cache(replicated: ServerProcess) -> None:
    body = {"prompt": "Identical greedy request, routed twice.", "max_length": 8, "temperature": 0}
    first, second = post(replicated, "/generate", body), post(replicated, "/generate", body)
    assert first.headers["x-replica"] == second.headers["x-replica"]
    assert second.headers["x-cache"] == "hit" and second.json() == first.json()


def test_probes_reach_every_replica_and_load_counts_return_to_zero(replicated: ServerProcess) -> None:
    # Each scrape probes both replicas from one ingress request at once; when such calls shared Serve's internal
    # request id, one of them was never delivered (the scrape waited out its probe limit and counted one replica)
    # and the router's load count of a replica grew by one per scrape, for good.
    for _ in range(6):
        samples = metric_samples(replicated)
        assert samples[("qwen3_api_replicas_answering", ())] == 2
    in_flight = {labels: value for (name, labels), value in samples.items() if name == "qwen3_api_router_in_flight"}
    assert len(in_flight) == 2 and all(value <= 1 for value in in_flight.values()), in_flight  # <= this scrape's own


def test_metrics_aggregate_both_replicas(replicated: ServerProcess) -> None:
    text = requests.get(f"{replicated.url}/metrics", timeout=90).text
    assert len(replica_ids(replicated)) == 2
    assert "qwen3_api_replicas 2" in text and "qwen3_api_router_decisions_total{" in text


def test_killing_a_replica_mid_load_gives_answers_or_clean_errors(
    replicated: ServerProcess, ray_head: RayHead, tmp_path: Path
) -> None:
    before = set(wait_for_loaded_replicas(replicated, 2, 60))
    victim = sorted(before)[0]
    go = tmp_path / "kill-now"
    # A driver connected to the cluster ahead of time (connecting takes seconds): it kills the victim's actor the
    # moment the file appears.
    killer = ray_head.spawn(
        "import os, time\n"
        "from ray.util import list_named_actors\n"
        f"name = next(a['name'] for a in list_named_actors(all_namespaces=True) if a['name'].endswith('#{victim}'))\n"
        "actor = ray.get_actor(name, namespace='serve')\n"
        "print('ready', flush=True)\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.05)\n"
        "ray.kill(actor)\n"
    )
    try:
        assert killer.stdout is not None
        ready, _, _ = select.select([killer.stdout], [], [], 120)  # connecting to the cluster takes seconds
        assert ready and killer.stdout.readline().strip() == "ready"
        _kill_mid_load(replicated, before, victim, go, killer)
    finally:
        if killer.poll() is None:
            killer.kill()
            killer.wait()


def _kill_mid_load(
    replicated: ServerProcess, before: set[str], victim: str, go: Path, killer: subprocess.Popen[str]
) -> None:
    def one(i: int) -> tuple[int, str]:
        stream = i % 2 == 0
        body = {"prompt": f"{i} request under load {i}", "max_length": 256, "stream": stream, "ignore_eos": True}
        # (connect, read) timeouts: a request that hangs fails the test instead of stalling it
        with requests.post(f"{replicated.url}/generate", json=body, stream=stream,
                           timeout=(10, KILL_READ_TIMEOUT_S)) as response:  # fmt: skip
            text = response.text
        return response.status_code, text

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(8)]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(running(replicated).get(r, 0) > 0 for r in before):
            time.sleep(0.5)  # until both replicas are generating
        go.touch()
        assert killer.wait(timeout=60) == 0
        results = [future.result(timeout=KILL_READ_TIMEOUT_S * 2) for future in futures]
    for status, text in results:
        if status == 200:
            assert text.rstrip().endswith("data: [DONE]") or "generated_texts" in text, text[-300:]
            if '"error"' in text:  # a stream cut by the death ends with the error event, then [DONE]
                assert "replica" in text
        else:
            assert status == 503 and "replica" in json.loads(text)["detail"], text
    assert any(status == 200 and '"error"' not in text for status, text in results)
    metrics = requests.get(f"{replicated.url}/metrics", timeout=90).text
    affected = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith(("qwen3_api_ingress_retries_total", "qwen3_api_ingress_replica_failures_total"))
    )
    assert affected > 0  # the victim had requests in flight: retried or ended with a clean error
    # Ray Serve starts a replacement; the ingress routes to it once it has loaded.
    after = wait_for_loaded_replicas(replicated, 2, 300)
    assert victim not in after and len(after) == 2
    assert post(replicated, "/generate", {"prompt": "after the restart", "max_length": 4}).status_code == 200


def running(server: ServerProcess) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{server.url}/metrics", timeout=90).text
    return {s.labels["replica"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "qwen3_api_engine_running"}  # fmt: skip


def requests_by_replica(server: ServerProcess) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{server.url}/metrics", timeout=90).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "qwen3_api_requests_total" and sample.labels.get("route") == "/generate":
                counts[sample.labels["replica"]] = counts.get(sample.labels["replica"], 0) + sample.value
    return counts
