"""The synchronous engine core interface that every backend implements; the async front drives it."""

from __future__ import annotations

from typing import Protocol

from qwen3_api.engine.outputs import CoreOutput
from qwen3_api.engine.sampling import SamplingParams


class EngineCore(Protocol):
    """Steps a set of requests forward. Called from one thread only (the async engine's loop thread)."""

    max_model_len: int

    def add_request(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, prefix_group: str | None = None
    ) -> None:
        """Queue a request; `prefix_group` marks siblings sharing one prompt (n > 1)."""

    def abort_request(self, request_id: str) -> None:
        """Stop a request now and free what it holds; no further outputs are reported for it."""

    def step(self) -> list[CoreOutput]:
        """Run one step; report new tokens and finishes."""

    def has_unfinished_requests(self) -> bool:
        """True while any request is waiting or running."""

    def stats(self) -> dict[str, float]:
        """Counters for logs and metrics (e.g. prefix cache hits, KV usage)."""

    def shutdown(self) -> None:
        """Release threads and memory."""
