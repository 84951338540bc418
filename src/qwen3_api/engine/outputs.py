"""What the engine reports about a request: per-step core outputs and the streamed request outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class FinishReason(str, Enum):
    """Why a sequence stopped: an end token or stop string, the token limit, or an abort."""

    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


@dataclass(frozen=True)
class TokenLogprob:
    """Log-probability of a chosen token and the most likely alternatives at that step."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class CoreOutput:
    """One engine step's news about one request: new token ids, and a finish reason once it is done."""

    request_id: str
    new_token_ids: list[int]
    new_logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    stop_token_id: int | None = None  # the end token that finished it, if any (never part of the text)
    error: str | None = None  # this request failed; the others go on
    queue_time: float | None = None  # seconds it waited before its first step, where the backend knows


@dataclass
class RequestOutput:
    """A streamed update of one request: the text and tokens added since the last update."""

    request_id: str
    new_text: str
    new_token_ids: list[int]
    finished: bool = False
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None
    stop_reason: str | int | None = field(default=None)  # the stop string or end token that matched
    queue_time: float | None = None  # seconds it waited before its first step, where the backend knows
