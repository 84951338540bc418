"""One hardened server shared by the hardening tests: API keys (flag and file), CORS, JSON logs, one queue slot
and a tiny grammar compile budget (starting a server costs minutes on a loaded machine)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import MAX_MODEL_LEN, ServerProcess, start_server, stop_server

FLAG_KEY, ENV_KEY, FILE_KEY = "flag-key-5b1e", "env-key-93ac", "file-key-2f7d"
ORIGIN = "https://app.example"
GRAMMAR_COMPILE_TIMEOUT = 0.001


@pytest.fixture(scope="session")
def hardened(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("hardened")
    key_file = work / "keys.txt"
    key_file.write_text(f"# team keys\n\n{FILE_KEY}\n")
    with pytest.MonkeyPatch.context() as env:  # the flag replaces this, as flags replace every environment setting
        env.setenv("QWEN3_API_API_KEYS", f"{ENV_KEY}, unused-env-key")
        server = start_server(
            str(tiny_model_dir), work / "server.log", "--backend", "torch", "--max-model-len", str(MAX_MODEL_LEN),
            "--api-key", FLAG_KEY, "--api-key-file", str(key_file), "--cors-origins", ORIGIN, "--log-format", "json",
            "--max-queued-requests", "1", "--grammar-compile-timeout", str(GRAMMAR_COMPILE_TIMEOUT),
        )  # fmt: skip
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def authed(hardened: ServerProcess) -> requests.Session:
    """A client of the hardened server that sends a valid key."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {FLAG_KEY}"
    return session
