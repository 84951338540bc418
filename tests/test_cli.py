"""The command line as a user runs it: chat against a live server, download, make-test-model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT, ServerProcess, free_port


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qwen3_api.cli", *args], input=stdin, capture_output=True, text=True, timeout=300,
        cwd=REPO_ROOT,
    )  # fmt: skip


def test_chat_streams_answers_and_keeps_history(torch_server: ServerProcess, tiny_model_dir: Path) -> None:
    result = cli("chat", "--url", torch_server.url, "--max-tokens", "4", "--no-thinking", stdin="Hello\n/reset\nAgain\n/exit\n")
    assert result.returncode == 0, result.stderr
    assert torch_server.model in result.stdout
    assert result.stdout.count("you>") == 4


def test_chat_without_a_server_is_one_clear_line() -> None:
    result = cli("chat", "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1 and "cannot reach a qwen3-api server" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_download_of_a_test_model_and_a_missing_one(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert str(tiny_model_dir) in cli("download", "test:tiny").stdout
    missing = subprocess.run(
        [sys.executable, "-m", "qwen3_api.cli", "download", "someone/nothing-here"], capture_output=True, text=True,
        timeout=120, env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert missing.returncode == 1 and "not in the local HF cache" in missing.stderr


def test_make_test_model_writes_a_loadable_directory(tmp_path: Path) -> None:
    out = tmp_path / "m"
    result = cli("make-test-model", str(out), "--shape", "tiny", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert {"config.json", "generation_config.json", "tokenizer.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    assert cli("make-test-model", str(out)).returncode == 2  # refuses to overwrite
