"""The app listens at once: /health is 503 while loading and after a failed load; 500 on a failing engine."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from fastapi.testclient import TestClient

from qwen3_api.config import Settings
from qwen3_api.engine.async_engine import AsyncEngine
from qwen3_api.engine.outputs import CoreOutput
from qwen3_api.engine.sampling import SamplingParams
from qwen3_api.engine.tokenizer import Tokenizer
from qwen3_api.errors import ModelLoadError
from qwen3_api.server.app import create_app

NOT_LOADED = {"detail": "Model or tokenizer not loaded"}


class BrokenCore:
    """A backend whose every step fails, standing in for a crash inside the model."""

    max_model_len = 1024

    def __init__(self) -> None:
        self.requests: set[str] = set()

    def add_request(self, request_id: str, prompt: list[int], params: SamplingParams, prefix_group=None) -> None:  # type: ignore[no-untyped-def]
        self.requests.add(request_id)

    def abort_request(self, request_id: str) -> None:
        self.requests.discard(request_id)

    def step(self) -> list[CoreOutput]:
        raise RuntimeError("device fell over")

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def stats(self) -> dict[str, float]:
        return {}

    def shutdown(self) -> None:
        pass


def test_health_is_503_while_loading_then_healthy(tiny_model_dir: Path) -> None:
    release = threading.Event()

    def slow_loader(settings: Settings) -> AsyncEngine:
        release.wait(timeout=60)
        return AsyncEngine(BrokenCore(), Tokenizer(tiny_model_dir), "slow-model")

    with TestClient(create_app(Settings(model="slow-model"), loader=slow_loader)) as client:
        assert client.get("/health").status_code == 503
        assert client.get("/health").json() == NOT_LOADED
        assert client.get("/live").json() == {"status": "alive"}  # alive while loading
        assert client.post("/generate", json={"prompt": "hi"}).json() == NOT_LOADED
        assert client.get("/").json()["model"] == "slow-model"
        release.set()
        for _ in range(200):
            if client.get("/health").status_code == 200:
                break
            threading.Event().wait(0.05)
        assert client.get("/health").json() == {"status": "healthy"}


def test_failed_load_keeps_503_and_reports_once(tiny_model_dir: Path) -> None:
    failures: list[bool] = []

    def failing_loader(settings: Settings) -> AsyncEngine:
        raise ModelLoadError("model 'x' is not in the local HF cache")

    app = create_app(Settings(model="x"), loader=failing_loader, on_load_failure=lambda: failures.append(True))
    with TestClient(app) as client:
        for _ in range(100):
            if failures:
                break
            threading.Event().wait(0.05)
        assert client.get("/health").status_code == 503
        assert failures == [True]
        assert "HF cache" in (app.state.server.load_error or "")


def test_engine_failure_is_500_generation_failed(tiny_model_dir: Path) -> None:
    def loader(settings: Settings) -> AsyncEngine:
        return AsyncEngine(BrokenCore(), Tokenizer(tiny_model_dir), "broken")

    with TestClient(create_app(Settings(model="broken"), loader=loader)) as client:
        for _ in range(200):
            if client.get("/health").status_code == 200:
                break
            threading.Event().wait(0.05)
        response = client.post("/generate", json={"prompt": "hi", "max_length": 4})
        assert response.status_code == 500
        detail = response.json()["detail"]
        assert detail.startswith("Generation failed") and "device fell over" not in detail  # internals stay in logs
        assert response.headers["X-Request-Id"]  # the id to find the details under in the server log


def test_http_layer_never_imports_torch() -> None:
    code = "import sys, qwen3_api.server.app, qwen3_api.cli; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
