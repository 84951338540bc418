"""Clients of the official openai SDK pointed at the live server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from tests.conftest import ServerPool, ServerProcess


@pytest.fixture(scope="session")
def client(torch_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{torch_server.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def model_id(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def sse_events(url: str, body: dict[str, Any]) -> Iterator[Any]:
    """The raw SSE payloads of a streamed POST, parsed ([DONE] as the string "[DONE]")."""
    with requests.post(url, json=body, stream=True, timeout=120) as response:
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines(decode_unicode=True):
            if not line:
                continue
            assert line.startswith("data: "), line
            payload = line[len("data: ") :]
            yield payload if payload == "[DONE]" else json.loads(payload)


@pytest.fixture(scope="session")
def thinking_client(opened_think_model_dir, server_pool):  # type: ignore[no-untyped-def]
    server = server_pool.get(str(opened_think_model_dir), "--backend", "torch")
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


# ---- the real Qwen3 chat templates (tests/fixtures/chat_templates) ----------------------------------------------
CHAT_TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "chat_templates"
REAL_TEMPLATES = ("qwen3-4b", "qwen3-4b-instruct-2507", "qwen3-4b-thinking-2507")


def model_dir_with_template(tiny_model_dir: Path, target: Path, template: str) -> Path:
    """The tiny model's files linked into `target`, with `template` as its chat template."""
    for item in tiny_model_dir.iterdir():
        if item.name != "chat_template.jinja":
            (target / item.name).symlink_to(item)
    (target / "chat_template.jinja").write_text(template)
    return target


@pytest.fixture(scope="session")
def real_template_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model once with each real Qwen3 template, by template name."""
    return {
        name: model_dir_with_template(
            tiny_model_dir, tmp_path_factory.mktemp(name), (CHAT_TEMPLATES_DIR / f"{name}.jinja").read_text()
        )
        for name in REAL_TEMPLATES
    }


@pytest.fixture(scope="module", params=REAL_TEMPLATES)
def template(request: pytest.FixtureRequest) -> str:
    """Each of the real Qwen3 chat templates in turn."""
    return str(request.param)


@pytest.fixture(scope="module")
def template_server(template: str, real_template_dirs: dict[str, Path], server_pool: ServerPool) -> ServerProcess:
    """The tiny model with that template, on our torch engine (shared by the OpenAI and Anthropic template tests)."""
    return server_pool.get(str(real_template_dirs[template]), "--backend", "torch")
