"""Checks every runner makes of a step's entries before any reaches the model: a malformed one would corrupt
another sequence's cache, or abort the process inside llama.cpp."""

from __future__ import annotations

from qwen3_api.engine.protocols import BatchEntry


def check_positions(batch: list[BatchEntry], max_position: int, limit: str) -> None:
    """Every entry has tokens, starts at a position >= 0 and ends at most at `max_position` (`limit` names that
    bound in the error)."""
    for i, entry in enumerate(batch):
        if not entry.token_ids:
            raise ValueError(f"batch entry {i} has no tokens")
        if entry.start_position < 0:
            raise ValueError(f"batch entry {i} has negative start_position {entry.start_position}")
        end = entry.start_position + len(entry.token_ids)
        if end > max_position:
            raise ValueError(f"batch entry {i} reaches position {end}, past {limit}")
