"""SIGTERM drains: new requests 503, /health 503, in-flight streams finish up to --shutdown-timeout, the rest end with
an error event, and the process exits 0."""

from __future__ import annotations

import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from tests.conftest import start_server, stop_server

SHUTDOWN_TIMEOUT = 6
STEP_MS = 40


def stream(url: str, max_length: int, started: threading.Event) -> list[str]:
    """The events of one streamed /generate; `started` is set at its first text event."""
    body = {"prompt": "Go on.", "max_length": max_length, "ignore_eos": True, "temperature": 1.0, "stream": True}
    events = []
    with requests.post(f"{url}/generate", json=body, stream=True, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
                started.set()
    return events


def test_sigterm_drains_then_exits_zero(tmp_path: Path) -> None:
    server = start_server(
        f"test:tiny:delay_ms={STEP_MS}", tmp_path / "drain.log", "--backend", "torch",
        "--shutdown-timeout", str(SHUTDOWN_TIMEOUT), "--max-model-len", "2048", "--quantize", "none",
    )  # fmt: skip
    try:
        with ThreadPoolExecutor(2) as pool:
            long_started, short_started = threading.Event(), threading.Event()
            long = pool.submit(stream, server.url, 1500, long_started)  # ~60 s: cut off by the timeout
            assert long_started.wait(60)
            short = pool.submit(stream, server.url, 15, short_started)  # ~0.6 s of steps: finishes in time
            assert short_started.wait(60)
            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            time.sleep(0.3)
            health = requests.get(f"{server.url}/health", timeout=10)
            refused = requests.post(f"{server.url}/generate", json={"prompt": "hi", "max_length": 2}, timeout=10)
            refused_stream = requests.post(
                f"{server.url}/generate", json={"prompt": "hi", "max_length": 2, "stream": True}, timeout=10
            )
            live = requests.get(f"{server.url}/live", timeout=10)
            short_events, long_events = short.result(), long.result()
            long_ended = time.monotonic() - signalled
        assert health.status_code == 503 and health.json() == {"detail": "Server is shutting down"}
        assert refused.status_code == 503 and refused.json() == {"detail": "Server is shutting down"}
        assert refused_stream.status_code == 503
        assert live.status_code == 200  # the process is alive while it drains
        assert short_events[-1] == "[DONE]"
        assert json.loads(short_events[-2]).get("finish_reason") == "length", short_events[-3:]
        assert long_events[-1] == "[DONE]"
        assert "Server is shutting down" in json.loads(long_events[-2])["error"]
        assert SHUTDOWN_TIMEOUT - 0.5 <= long_ended < SHUTDOWN_TIMEOUT + 5, long_ended
        assert server.process.wait(timeout=20) == 0, server.log()[-3000:]
    finally:
        stop_server(server)
