"""Faults: one request's failure fails it alone; a failed step fails its batch and the engine goes on; a dead engine
loop ends every request with an error, turns /health and /live to 503 and exits the process non-zero.

Faults come from the fault-injecting test runner (qwen3_api.demo_models.faults), triggered by token ids in a prompt.
"""

from __future__ import annotations

import contextlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from qwen3_api.server.errors import GENERATION_FAILED
from tests.conftest import ServerProcess, start_server, stop_server
from tests.server.engine_gauges import DIE_TOKEN, FAIL_TOKEN, NAN_TOKEN, is_idle, sse_events, wait_for
from tests.server.test_disconnect import slow_server  # noqa: F401 - the shared slow fault-injecting servers

NORMAL = {"prompt": [9707, 11, 1879], "max_tokens": 40, "ignore_eos": True, "temperature": 1.0}


def model_of(server: ServerProcess) -> str:
    return str(requests.get(f"{server.url}/v1/models", timeout=10).json()["data"][0]["id"])


def complete(server: ServerProcess, body: dict) -> requests.Response:
    # A loaded 2-core machine can stall llama.cpp's threads for minutes: a long read timeout, the test is not timed.
    return requests.post(f"{server.url}/v1/completions", json={"model": model_of(server), **body}, timeout=600)


def test_a_request_with_nan_logits_fails_alone(slow_server: ServerProcess) -> None:  # noqa: F811
    poisoned = {**NORMAL, "prompt": [NAN_TOKEN, NAN_TOKEN, 1879]}
    with ThreadPoolExecutor(3) as pool:
        others = [pool.submit(complete, slow_server, NORMAL) for _ in range(2)]
        wait_for(slow_server, lambda g: g.get("running") == 2, 30)  # both are decoding: the batch is shared
        bad = complete(slow_server, poisoned)
        assert all(f.running() for f in others), "the batch was not shared: the others already finished"
        results = [f.result() for f in others]
    assert bad.status_code == 500, bad.text
    # The client gets our generic words; the reason stays in the server log, under the request id.
    assert bad.json()["error"]["message"] == GENERATION_FAILED
    assert "the model produced no finite logit for this request" in slow_server.log()
    for response in results:
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] == 40
    assert is_idle(wait_for(slow_server, is_idle, 5))


def test_a_streamed_request_with_nan_logits_gets_an_error_event(slow_server: ServerProcess) -> None:  # noqa: F811
    body = {"model": model_of(slow_server), **NORMAL, "prompt": [NAN_TOKEN, NAN_TOKEN, 1879], "stream": True}
    response = requests.post(f"{slow_server.url}/v1/completions", json=body, stream=True, timeout=60)
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["message"] == GENERATION_FAILED


def test_a_failed_step_fails_its_batch_and_the_engine_goes_on(slow_server: ServerProcess) -> None:  # noqa: F811
    failing = complete(slow_server, {**NORMAL, "prompt": [FAIL_TOKEN, FAIL_TOKEN, 1879]})
    assert failing.status_code == 500
    assert failing.json()["error"]["message"] == GENERATION_FAILED
    assert "injected step failure" in slow_server.log()
    after = complete(slow_server, {**NORMAL, "max_tokens": 5})
    assert after.status_code == 200 and after.json()["usage"]["completion_tokens"] == 5
    assert is_idle(wait_for(slow_server, is_idle, 5))


def test_a_dead_engine_loop_answers_everyone_and_exits_non_zero(tmp_path: Path) -> None:
    server = start_server(f"test:tiny:delay_ms=20,die_token={DIE_TOKEN}", tmp_path / "die.log", "--backend", "torch")
    try:
        assert requests.get(f"{server.url}/live", timeout=10).status_code == 200
        model = model_of(server)
        long_body = {"model": model, **NORMAL, "max_tokens": 1000}
        with ThreadPoolExecutor(2) as pool:
            in_flight = pool.submit(
                requests.post, f"{server.url}/v1/completions", json={**long_body, "stream": True}, timeout=60
            )
            time.sleep(1.0)  # the stream is decoding
            killer = requests.post(
                f"{server.url}/v1/completions", json={**long_body, "prompt": [DIE_TOKEN, DIE_TOKEN]}, timeout=30
            )
            died = time.monotonic()
            stream = in_flight.result()
        assert killer.status_code == 500, killer.text
        assert killer.json()["error"]["message"] == GENERATION_FAILED
        events = [line for line in stream.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        assert GENERATION_FAILED in events[-2]
        assert "the engine loop stopped: InjectedLoopFault" in server.log()
        seen = set()
        while server.process.poll() is None and time.monotonic() - died < 10:
            with contextlib.suppress(requests.RequestException):  # already closing
                seen.add((requests.get(f"{server.url}/health", timeout=2).status_code,
                          requests.get(f"{server.url}/live", timeout=2).status_code))  # fmt: skip
            time.sleep(0.1)
        assert server.process.poll() is not None, "the process was still running 10 s after the engine died"
        assert server.process.returncode != 0
        assert (503, 503) in seen and seen == {(503, 503)}, seen
    finally:
        stop_server(server)
