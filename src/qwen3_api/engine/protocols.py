"""What the engine needs from the code that computes the model, and the data it exchanges with it.

The engine owns these interfaces; executors implement them (executors.model_runner, executors.llamacpp_runner,
executors.sampler, executors.structured_mask) and the runtime package wires one of each into an `LLMEngine`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from qwen3_api.engine.outputs import TokenLogprob
from qwen3_api.engine.sampling import SamplingParams

if TYPE_CHECKING:
    import torch

    from qwen3_api.engine.structured import GrammarMatcher


@dataclass
class BatchEntry:
    """One sequence's share of a step, as decided by the scheduler."""

    token_ids: list[int]  # the new tokens to compute this step
    start_position: int  # absolute position of token_ids[0] (= tokens already in the cache for this sequence)
    block_table: list[int]  # physical block ids covering positions 0..start_position + len(token_ids) - 1
    need_logits: bool
    request_id: str = ""  # runners that keep per-sequence state (llama.cpp's sequence ids) key it by this
    # Speculative decoding: the last num_draft_tokens of token_ids are guesses; an entry that needs logits then gets
    # 1 + num_draft_tokens rows (its real last token's and each draft's). Only the llama.cpp runner computes them.
    num_draft_tokens: int = 0


class ModelRunner(Protocol):
    """Computes one engine step's batch and returns next-token logits."""

    def forward(self, batch: list[BatchEntry]) -> torch.Tensor:
        """Float32 logits [entries with need_logits, vocab] for the last new token of each such entry."""

    def release(self, request_ids: Iterable[str]) -> None:
        """Forget per-sequence state of finished or aborted requests."""

    def stats(self) -> dict[str, float]:
        """The runner's own gauges and counters (its caches); the engine's stats carry them. Empty where none."""


@dataclass(frozen=True)
class SamplingRow:
    """One row of the logits: whose it is, how to sample it, and the token history the penalties look at."""

    request_id: str
    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]


@dataclass(frozen=True)
class SampledToken:
    """The token chosen for one row, with its log-probability when the request asked for logprobs."""

    token_id: int
    logprob: TokenLogprob | None


class TokenSampler(Protocol):
    """Picks the next token of every row of a step's logits; may keep per-request state (seeded generators)."""

    def sample(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> list[SampledToken]:
        """One token per row of `logits` [B, V]; `rows[i]` describes row i. `logits` is left as is."""

    def add_request(self, request_id: str, params: SamplingParams) -> None:
        """Set up a request's state before its first step; a failure here is that request's error."""

    def release(self, request_ids: Iterable[str]) -> None:
        """Forget the state of finished or aborted requests."""


class LogitsMasker(Protocol):
    """Applies structured-output grammars to a step's logits before sampling."""

    def __call__(self, logits: torch.Tensor, matchers: Sequence[GrammarMatcher | None]) -> None:
        """Set to -inf, in place, each logit [B, V] of a token that row's grammar forbids (None: row untouched)."""


@dataclass
class SequenceStates:
    """Sequences hottest first: the token ids whose K/V each holds (positions 0..n-1) and its llama.cpp state,
    `states[offsets[i] : offsets[i + 1]]`."""

    tokens: list[list[int]]
    states: torch.Tensor  # uint8 [total bytes]
    offsets: list[int]  # len(tokens) + 1

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def num_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)


class RetainedSequences(Protocol):
    """What a runner that keeps finished sequences' KV (the llama.cpp runner) offers this cache."""

    @property
    def retained_version(self) -> int: ...

    def export_retained(self, max_bytes: int) -> SequenceStates: ...

    def restore_retained(self, snapshot: SequenceStates) -> tuple[int, int]: ...
