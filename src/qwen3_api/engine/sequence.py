"""A sequence as the scheduler sees it: token ids, progress and the KV blocks it holds. Pure Python."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum

from qwen3_api.engine.outputs import FinishReason
from qwen3_api.engine.sampling import SamplingParams


class SequenceStatus(Enum):
    """Where a sequence is in its life."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """One generation: the prompt, the tokens produced so far, and how much of it the KV cache holds.

    `num_computed_tokens` counts tokens whose K/V are in the cache; tokens past it are computed by the next
    steps (a chunk of prompt, or the last sampled token when decoding). After preemption it drops to 0 and the
    prompt plus the output so far are recomputed, so the output continues unchanged.
    """

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_order: int = 0
    prefix_group: str | None = None  # siblings of one n>1 request share a prompt: prefill it once
    output_token_ids: list[int] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache at the first admission
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: FinishReason | None = None
    num_preemptions: int = 0
    arrival_time: float = field(default_factory=time.monotonic)
    queue_time: float | None = None  # seconds from arrival to first being scheduled

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_id_at(self, index: int) -> int:
        """The token at absolute position `index` (prompt first, then output)."""
        n = len(self.prompt_token_ids)
        return self.prompt_token_ids[index] if index < n else self.output_token_ids[index - n]

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
