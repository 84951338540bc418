"""Shared fixtures: locally built test models and real server processes on free ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from qwen3_api.demo_models.checkpoints import cached_test_model

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny random-weight Qwen3 with the real tokenizer (built once, cached)."""
    return cached_test_model("tiny")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A running `qwen3-api serve` process."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    model: str = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(model: str, log_path: Path, *args: str, wait_healthy: bool = True, timeout: float = 180) -> ServerProcess:
    """Start the real server process on a free port; wait until /health says healthy."""
    port = free_port()
    command = [sys.executable, "-m", "qwen3_api.cli", "serve", "--model", model, "--port", str(port), *args]
    log = log_path.open("wb")
    # A small KV budget unless the test sets one: the suite keeps a dozen servers alive at once, and the default
    # (1 GiB on torch, half the free memory on llama.cpp) would exhaust the machine's memory.
    env = {"QWEN3_API_KV_CACHE_MEMORY": TEST_SERVER_KV_GIB, **os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log_path, model)
    if wait_healthy:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
            try:
                if requests.get(f"{server.url}/health", timeout=5).status_code == 200:
                    return server
            except requests.RequestException:  # not listening yet, or too busy to answer in time
                pass
            time.sleep(0.2)
        stop_server(server)
        raise RuntimeError(f"server not healthy after {timeout} s:\n{server.log()}")
    return server


def stop_process(process: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stop_server(server: ServerProcess) -> None:
    stop_process(server.process, timeout=30)


# The original-API tests run against each of these: our engine, with int8 weights, on llama.cpp (the same tiny
# model as GGUF), and the HF reference. None stands for the tiny model's directory.
SERVED_BACKENDS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "torch": (None, ("--backend", "torch", "--quantize", "none")),
    "torch-int8": (None, ("--backend", "torch", "--quantize", "int8")),
    "llamacpp": ("test:tiny:gguf=F32", ("--backend", "llamacpp")),
    "reference": (None, ("--backend", "reference")),
}
MAX_MODEL_LEN = 2048
TEST_SERVER_KV_GIB = "0.25"


class ServerPool:
    """Servers started on demand and shared by the whole session, keyed by model and arguments."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.servers: dict[tuple[str, ...], ServerProcess] = {}

    def get(self, model: str, *args: str) -> ServerProcess:
        key = (model, *args)
        if key not in self.servers:
            log_path = self.log_dir / f"server-{len(self.servers)}.log"
            self.servers[key] = start_server(model, log_path, "--max-model-len", str(MAX_MODEL_LEN), *args)
        return self.servers[key]

    def stop_all(self) -> None:
        for server in self.servers.values():
            stop_server(server)


@pytest.fixture(scope="session")
def server_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    pool = ServerPool(tmp_path_factory.mktemp("server-logs"))
    yield pool
    pool.stop_all()


@pytest.fixture(scope="session", params=list(SERVED_BACKENDS))
def server(request: pytest.FixtureRequest, tiny_model_dir: Path, server_pool: ServerPool) -> ServerProcess:
    """The tiny model served by each backend in turn (the original-API tests run against all of them)."""
    model, args = SERVED_BACKENDS[request.param]
    return server_pool.get(model or str(tiny_model_dir), *args)


@pytest.fixture(scope="session", params=["torch", "llamacpp"])
def torch_server(request: pytest.FixtureRequest, tiny_model_dir: Path, server_pool: ServerPool) -> ServerProcess:
    """The tiny model on our engine, with our torch model or llama.cpp computing it (the OpenAI API tests use
    features the reference backend lacks)."""
    if request.param == "llamacpp":
        return server_pool.get("test:tiny:gguf=F32", "--backend", "llamacpp")
    return server_pool.get(str(tiny_model_dir), "--backend", "torch")


THINKING_GENERATION_PROMPT = "{{- '<think>\\n\\n</think>\\n\\n' -}}{%- else -%}{{- '<think>\\n' -}}{%- endif -%}"


@pytest.fixture(scope="session")
def opened_think_model_dir(tiny_model_dir, tmp_path_factory):  # type: ignore[no-untyped-def]
    """The tiny model with a template that opens `<think>` itself when thinking is on (as thinking-only Qwen3
    templates do), so the output holds only `</think>`."""
    target = tmp_path_factory.mktemp("opened-think")
    for item in tiny_model_dir.iterdir():
        (target / item.name).symlink_to(item)
    template = (tiny_model_dir / "chat_template.jinja").read_text()
    old = "{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}"
    assert old in template
    (target / "chat_template.jinja").unlink()
    (target / "chat_template.jinja").write_text(template.replace(old, THINKING_GENERATION_PROMPT))
    return target
