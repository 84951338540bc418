"""A client that goes away is aborted inside the engine: its running/waiting queues and KV blocks return to idle.

The servers' runner sleeps 40 ms per step (a fault-injecting test runner), so each request below would run for
tens of seconds: prefill of a ~1000-token prompt in 16-token chunks, or 1000 decode steps. Seeing the engine's own
gauges back at idle within a few seconds of the hang-up can only mean the engine aborted it.
"""

from __future__ import annotations

import time

import pytest

from tests.conftest import ServerPool, ServerProcess
from tests.server.engine_gauges import FAIL_TOKEN, NAN_TOKEN, engine_gauges, is_idle, open_request, wait_for

SLOW_ARGS = ("--max-num-batched-tokens", "16")
SLOW_SERVERS = {
    "torch": (f"test:tiny:delay_ms=40,nan_token={NAN_TOKEN},fail_token={FAIL_TOKEN}", "--backend", "torch"),
    "llamacpp": (f"test:tiny:gguf=F32,delay_ms=40,nan_token={NAN_TOKEN},fail_token={FAIL_TOKEN}", "--backend", "llamacpp"),
}
LONG_PROMPT = "count the stars " * 250  # ~1000 tokens: ~63 prefill steps of 16 tokens
SHORT_PROMPT = "Go on forever."
ABORT_SECONDS = 3.0  # generous for a loaded 2-core machine; the requests would run for 40 s and more


@pytest.fixture(scope="session", params=list(SLOW_SERVERS))
def slow_server(request: pytest.FixtureRequest, server_pool: ServerPool) -> ServerProcess:
    """The tiny model on each backend behind a runner that sleeps 40 ms per step and injects faults on tokens."""
    model, *args = SLOW_SERVERS[request.param]
    return server_pool.get(model, *args, *SLOW_ARGS)


@pytest.mark.parametrize("phase", ["prefill", "decode"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_is_aborted_within_a_step(slow_server: ServerProcess, stream: bool, phase: str) -> None:
    assert is_idle(wait_for(slow_server, is_idle, 30)), "the server was not idle before the test"
    prompt = LONG_PROMPT if phase == "prefill" else SHORT_PROMPT
    body = {"prompt": prompt, "max_length": 1000, "ignore_eos": True, "temperature": 1.0, "stream": stream}
    sock = open_request(slow_server, "/generate", body)
    try:
        gauges = wait_for(slow_server, lambda g: g.get("running") == 1, 30)
        assert gauges["running"] == 1 and gauges["kv_blocks_used"] > 0, gauges
        if phase == "decode":
            sock.settimeout(30)
            received = b""
            while b'"text"' not in received:  # a streamed token, or (not streamed) just wait a few steps
                if not stream:
                    time.sleep(0.5)
                    break
                received += sock.recv(4096)
        else:
            time.sleep(0.3)
            assert engine_gauges(slow_server)["running"] == 1, "the prefill ended before the client left"
    finally:
        sock.close()
    hung_up = time.monotonic()
    gauges = wait_for(slow_server, is_idle, ABORT_SECONDS)
    assert is_idle(gauges), f"{time.monotonic() - hung_up:.1f} s after the client left the engine still holds {gauges}"
