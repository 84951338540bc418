"""What the engine needs from a model runner, whatever computes the model (our torch model, llama.cpp)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import torch

from qwen3_api.executors.model_runner import BatchEntry


class ModelRunner(Protocol):
    """Computes one engine step's batch and returns next-token logits."""

    def forward(self, batch: list[BatchEntry]) -> torch.Tensor:
        """Float32 logits [entries with need_logits, vocab] for the last new token of each such entry."""

    def release(self, request_ids: Iterable[str]) -> None:
        """Forget per-sequence state of finished or aborted requests."""
