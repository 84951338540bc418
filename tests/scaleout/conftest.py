"""A Ray head on free ports and `qwen3-api serve --replicas 2 --ray-address` on it, shared by a test module."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO_ROOT, TEST_SERVER_KV_GIB, ServerProcess, free_port, stop_process, stop_server

ray = pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'qwen3-api[ray]')")

RAY_CPUS = 2  # two replicas of one CPU each
STARTUP_TIMEOUT_S = 420  # Ray, two model loads and the ingress on a shared 2-core machine
# The test cluster listens on localhost only; Ray's token authentication (on by default for new local clusters,
# with one token file per user) would tie it to whichever cluster last wrote that file.
RAY_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}


@dataclass
class RayHead:
    address: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def run(self, code: str, timeout: float = 120) -> str:
        """Run `code` in a fresh driver connected to this cluster (`ray` and `ADDRESS` are defined)."""
        script = f"import ray\nADDRESS = {self.address!r}\nray.init(address=ADDRESS, log_to_driver=False)\n{code}"
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout,
                                cwd=REPO_ROOT, env=RAY_ENV)  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def spawn(self, code: str) -> subprocess.Popen[str]:
        """Start `code` in a fresh driver connected to this cluster, stdout piped."""
        script = f"import ray\nADDRESS = {self.address!r}\nray.init(address=ADDRESS, log_to_driver=False)\n{code}"
        return subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=RAY_ENV
        )


def start_ray_head(log_path: Path) -> RayHead:
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    assert ray_cli is not None
    port = free_port()
    command = [
        ray_cli, "start", "--head", "--block", f"--port={port}", f"--num-cpus={RAY_CPUS}", "--num-gpus=0",
        "--include-dashboard=false", "--disable-usage-stats", f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
    ]  # fmt: skip
    log = log_path.open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=RAY_ENV)
    head = RayHead(f"127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited:\n{log_path.read_text()}")
        if "ray start --address" in log_path.read_text(errors="replace") or "Ray runtime started" in log_path.read_text(
            errors="replace"
        ):
            return head
        time.sleep(0.5)
    stop_ray_head(head)
    raise RuntimeError(f"the Ray head did not start:\n{log_path.read_text()}")


def stop_ray_head(head: RayHead) -> None:
    """`ray start --block` stops the processes it started when it is terminated."""
    stop_process(head.process, timeout=60)


def replica_ids(server: ServerProcess) -> dict[str, float]:
    """Replica id -> qwen3_api_model_loaded, from the ingress' merged /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    response = requests.get(f"{server.url}/metrics", timeout=90)
    if response.status_code != 200:  # Ray Serve's proxy answers 404 until the application is deployed
        return {}
    text = response.text
    return {sample.labels["replica"]: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == "qwen3_api_model_loaded"}  # fmt: skip


def wait_for_loaded_replicas(server: ServerProcess, count: int, timeout: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    seen: dict[str, float] = {}
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
        try:
            seen = replica_ids(server)
        except requests.RequestException:
            seen = {}
        if sum(value == 1 for value in seen.values()) >= count:
            return seen
        time.sleep(1)
    raise RuntimeError(f"{count} loaded replicas not seen after {timeout} s (last: {seen}):\n{server.log()[-20000:]}")


def start_replicated_server(head: RayHead, model: str, log_path: Path, *args: str) -> ServerProcess:
    port = free_port()
    command = [sys.executable, "-m", "qwen3_api.cli", "serve", "--model", model, "--port", str(port),
               "--replicas", "2", "--ray-address", head.address, *args]  # fmt: skip
    env = {"QWEN3_API_KV_CACHE_MEMORY": TEST_SERVER_KV_GIB, **RAY_ENV, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=log_path.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log_path, model)
    try:
        wait_for_loaded_replicas(server, 2, STARTUP_TIMEOUT_S)
    except BaseException:
        stop_server(server)
        raise
    return server


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    head = start_ray_head(tmp_path_factory.mktemp("ray") / "head.log")
    yield head
    stop_ray_head(head)


@pytest.fixture(scope="module")
def replicated(
    ray_head: RayHead, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """Two replicas of the tiny model on our torch engine, one CPU each, behind the ingress."""
    log_path = tmp_path_factory.mktemp("replicated") / "serve.log"
    server = start_replicated_server(ray_head, str(tiny_model_dir), log_path, "--backend", "torch", "--quantize",
                                     "none", "--max-model-len", "2048",
                                     # bounds the ingress' wait on a replica (request timeout + 30 s): 90 s
                                     "--request-timeout", "60")  # fmt: skip
    yield server
    stop_server(server)
