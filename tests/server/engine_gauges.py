"""Read what the engine itself reports on /metrics (its scheduler's queues and KV blocks), and raw-socket clients."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import requests

from tests.conftest import ServerProcess

IDLE = {"running": 0.0, "waiting": 0.0, "kv_blocks_used": 0.0, "unfinished": 0.0}

# Token ids the fault-injecting test runner reacts to (qwen3_api.demo_models.faults), in prompt chunks only.
NAN_TOKEN = 150000
FAIL_TOKEN = 150001
DIE_TOKEN = 150002


def engine_gauges(server: ServerProcess) -> dict[str, float]:
    """The engine's running/waiting queues, KV blocks in use and unfinished requests, from /metrics."""
    names = {
        "qwen3_api_engine_running": "running",
        "qwen3_api_engine_waiting": "waiting",
        "qwen3_api_engine_kv_blocks_used": "kv_blocks_used",
        "qwen3_api_engine_kv_usage": "kv_usage",
        "qwen3_api_unfinished_requests": "unfinished",
    }
    values = {}
    for line in requests.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            values[names[name]] = float(value)
    return values


def is_idle(gauges: dict[str, float]) -> bool:
    return all(gauges.get(k) == v for k, v in IDLE.items())


def wait_for(server: ServerProcess, condition: Any, seconds: float) -> dict[str, float]:
    """Poll the gauges until `condition(gauges)` holds; return the last gauges read."""
    deadline = time.monotonic() + seconds
    gauges = engine_gauges(server)
    while not condition(gauges) and time.monotonic() < deadline:
        time.sleep(0.05)
        gauges = engine_gauges(server)
    return gauges


def open_request(server: ServerProcess, path: str, body: dict[str, Any]) -> socket.socket:
    """POST `body` on a raw socket and return the socket (the caller reads, then closes it to hang up)."""
    host, port = server.url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


def sse_events(response: requests.Response) -> list[str]:
    """The data lines of a streamed response, in order."""
    return [line.removeprefix("data: ") for line in response.iter_lines(decode_unicode=True) if line.startswith("data: ")]
