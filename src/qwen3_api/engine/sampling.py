"""Sampling parameters of one request: frozen, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from qwen3_api.engine.thinking import ThinkingBudget
from qwen3_api.errors import InvalidRequestError

if TYPE_CHECKING:
    from qwen3_api.engine.structured import StructuredOutput

MAX_TOP_LOGPROBS = 20
# Below this a penalty divides logits by ~0 (float32 underflow: 5e-324 is 0.0) and sampling breaks down.
MIN_REPETITION_PENALTY = 0.01
MAX_REPETITION_PENALTY = 10.0


def _check_finite(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise InvalidRequestError(f"{name} must be a finite number, got {value!r}", param=name)


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop, for one sequence.

    temperature 0 means greedy; top_k 0 and top_p 1 mean off. `logprobs` None returns no log-probabilities,
    0 returns the chosen token's, k > 0 also the k most likely alternatives.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None
    logit_bias: tuple[tuple[int, float], ...] = field(default=())
    skip_special_tokens: bool = True
    structured: StructuredOutput | None = None  # a grammar the output must follow (JSON, forced tool calls)
    thinking: ThinkingBudget | None = None  # end the Qwen3 thought after this many tokens (engine/thinking.py)

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
            _check_finite(name, getattr(self, name))
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}", "max_tokens")
        if self.temperature < 0 or self.temperature > 2:
            raise InvalidRequestError(f"temperature must be in [0, 2], got {self.temperature}", "temperature")
        if not 0 < self.top_p <= 1:
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p}", "top_p")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise InvalidRequestError(f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}", "top_k")
        if not 0 <= self.min_p <= 1:
            raise InvalidRequestError(f"min_p must be in [0, 1], got {self.min_p}", "min_p")
        if not MIN_REPETITION_PENALTY <= self.repetition_penalty <= MAX_REPETITION_PENALTY:
            raise InvalidRequestError(
                f"repetition_penalty must be in [{MIN_REPETITION_PENALTY}, {MAX_REPETITION_PENALTY}], "
                f"got {self.repetition_penalty}",
                "repetition_penalty",
            )
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise InvalidRequestError(f"{name} must be in [-2, 2], got {getattr(self, name)}", name)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise InvalidRequestError(f"seed must be an integer, got {self.seed!r}", "seed")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidRequestError(
                f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {self.logprobs}", "top_logprobs"
            )
        if any(not s for s in self.stop):
            raise InvalidRequestError("stop strings must not be empty", "stop")
        if self.thinking is not None and self.structured is not None:
            raise InvalidRequestError(
                "a thinking budget cannot be combined with structured output: the grammar starts at the first token",
                "thinking_budget",
            )
        for _, bias in self.logit_bias:
            if not -100 <= bias <= 100:
                raise InvalidRequestError(f"logit_bias values must be in [-100, 100], got {bias}", "logit_bias")

    @property
    def greedy(self) -> bool:
        """True when the most likely token is always taken."""
        return self.temperature == 0

    @property
    def needs_penalties(self) -> bool:
        """True when the output-token history changes the logits."""
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
