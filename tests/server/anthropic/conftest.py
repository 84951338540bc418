"""Clients of the official anthropic SDK pointed at the live server, on both backends of our engine."""

from __future__ import annotations

from pathlib import Path

import anthropic
import pytest

from tests.conftest import ServerPool, ServerProcess
from tests.server.openai.conftest import real_template_dirs, template, template_server  # noqa: F401 (fixtures)


def client_of(server: ServerProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def client(torch_server: ServerProcess) -> anthropic.Anthropic:
    """The tiny model with our template, on our engine with torch and with llama.cpp computing it."""
    return client_of(torch_server)


@pytest.fixture(scope="session")
def model_id(torch_server: ServerProcess) -> str:
    return torch_server.model


@pytest.fixture(scope="session")
def opened_think_gguf(opened_think_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from qwen3_api.demo_models.gguf import write_gguf

    return write_gguf(opened_think_model_dir, tmp_path_factory.mktemp("opened-think-gguf") / "opened-think-F32.gguf")


@pytest.fixture(scope="session", params=["torch", "llamacpp"])
def thinking_server(request: pytest.FixtureRequest, server_pool: ServerPool, opened_think_model_dir: Path,
                    opened_think_gguf: Path) -> ServerProcess:  # fmt: skip
    """A model that opens a thought from its template and, with random weights, never ends it by itself."""
    if request.param == "llamacpp":
        return server_pool.get(str(opened_think_gguf), "--backend", "llamacpp")
    return server_pool.get(str(opened_think_model_dir), "--backend", "torch")
