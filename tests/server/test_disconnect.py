"""A client that goes away frees its work: the engine aborts its requests (seen on /metrics)."""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests

from tests.conftest import ServerProcess


def unfinished(server: ServerProcess) -> float:
    for line in requests.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("qwen3_api_unfinished_requests "):
            return float(line.split()[1])
    raise AssertionError("metric missing")


def wait_until_idle(server: ServerProcess, seconds: float = 60) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if unfinished(server) == 0:
            return True
        time.sleep(0.1)
    return False


LONG = {"prompt": "Go on forever.", "max_length": 1500, "ignore_eos": True, "temperature": 1.0}


def send_and_hang_up(server: ServerProcess, body: dict, read_bytes: int) -> None:
    """POST `body` on a raw socket, read a little of the answer, then close the connection."""
    host, port = server.url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload
        )
        received = b""
        while len(received) < read_bytes:
            received += sock.recv(read_bytes - len(received))
        time.sleep(0.5)  # the request is running now


@pytest.mark.parametrize("stream", [False, True])
def test_disconnected_client_is_aborted(torch_server: ServerProcess, stream: bool) -> None:
    assert wait_until_idle(torch_server)
    send_and_hang_up(torch_server, {**LONG, "stream": stream}, read_bytes=200 if stream else 0)
    assert wait_until_idle(torch_server, seconds=5), "the engine kept generating for a client that left"
