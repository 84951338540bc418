"""The contract's example client, run as a user would run it."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT, ServerProcess, free_port

SCRIPT = str(REPO_ROOT / "src" / "api_examples.py")


def run_client(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=300)


def test_examples_print_generation_and_chat(server: ServerProcess) -> None:
    result = run_client("--url", server.url, "--max-length", "8", "--num-sequences", "2", "--prompt", "Hi there")
    assert result.returncode == 0, result.stderr
    assert "Qwen3-4B API" in result.stdout
    assert "health: healthy" in result.stdout
    assert "=== generate ===" in result.stdout and "=== chat (ChatML) ===" in result.stdout
    assert result.stdout.count("--- sequence 2 ---") == 2


def test_unreachable_server_gives_one_clear_line() -> None:
    result = run_client("--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "cannot reach the server" in result.stderr
    assert "Traceback" not in result.stderr


def test_server_error_is_reported_without_traceback(server: ServerProcess) -> None:
    result = run_client("--url", server.url, "--temperature", "5")
    assert result.returncode == 1
    assert "HTTP 422" in result.stderr and "temperature" in result.stderr
    assert "Traceback" not in result.stderr
