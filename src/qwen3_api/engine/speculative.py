"""Speculative decoding with prompt-lookup drafts: propose, verify in the same batched forward, count.

A decoding sequence's step computes its last token plus K draft tokens (from `NgramProposer`) in one forward, with
logits at every one of those positions. Verification runs the ordinary sampler on those logits in order, each
position with the history of the tokens accepted before it, and keeps going while the sampled token equals the
draft. Every token kept was sampled from exactly the logits a one-token-per-step decode would have had (same
context, same sampling parameters and penalties, one draw of the request's generator per token), so:

- greedy output is the non-speculative greedy output for the same logits;
- a sampled row draws token i from p_i given tokens < i, whether it matches the draft or not, so the output has
  the model's distribution; a seeded row draws the same numbers in the same order as without speculation.

Rows with a grammar (structured output) or a thinking budget do not speculate: their per-token state machines
run in the engine's ordinary path. Speculation turns itself off for a step when more than `max_batch`
sequences decode in it: a batched decode already keeps the cores busy, and verifying K extra tokens per sequence
then costs about as much as it saves (see the README's measurements).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from qwen3_api.config import Settings
from qwen3_api.engine.ngram_proposer import NgramProposer
from qwen3_api.engine.protocols import SampledToken, SamplingRow, TokenSampler
from qwen3_api.engine.scheduler import ScheduledChunk, SchedulerOutput
from qwen3_api.engine.sequence import Sequence

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpeculativeConfig:
    """`--speculative ngram` knobs; validated on construction."""

    num_tokens: int  # drafts verified per sequence per step (K)
    ngram_min: int
    ngram_max: int
    max_batch: int  # speculate only while at most this many sequences decode in a step

    def __post_init__(self) -> None:
        if self.num_tokens < 1 or self.max_batch < 1:
            raise ValueError("num_tokens and max_batch must be >= 1")
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise ValueError(f"need 1 <= ngram_min <= ngram_max, got {self.ngram_min}..{self.ngram_max}")


class Speculator:
    """Drafts for a step's decodes and their verification; counts proposed and accepted drafts."""

    def __init__(self, config: SpeculativeConfig, eos_token_ids: tuple[int, ...]) -> None:
        self.config = config
        self.proposer = NgramProposer(config.num_tokens, config.ngram_min, config.ngram_max)
        self.eos_token_ids = eos_token_ids
        self.num_draft_tokens = 0  # proposed and verified
        self.num_accepted_tokens = 0
        self.num_full_batch_steps = 0  # steps where speculation was off because too many sequences decoded

    def stats(self) -> dict[str, float]:
        return {
            "spec_decode_draft_tokens": float(self.num_draft_tokens),
            "spec_decode_accepted_tokens": float(self.num_accepted_tokens),
            "spec_decode_full_batch_steps": float(self.num_full_batch_steps),
        }

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    def propose(self, out: SchedulerOutput, eligible: Callable[[Sequence], bool]) -> dict[str, list[int]]:
        """Drafts for this step's decode chunks of eligible sequences; none when the step decodes more than
        `max_batch` sequences. A sequence gets at most what its max_tokens leaves after the token it samples
        anyway, and no draft past an end token (unless it ignores them) or a stop token."""
        decodes = [c for c in out.chunks if c.samples and c.num_new_tokens == 1]
        if len(decodes) > self.config.max_batch:
            self.num_full_batch_steps += 1
            return {}
        drafts = {}
        for chunk in decodes:
            seq = chunk.seq
            if not eligible(seq):
                continue
            room = seq.params.max_tokens - len(seq.output_token_ids) - 1
            stops = set(seq.params.stop_token_ids)
            if not seq.params.ignore_eos:
                stops.update(self.eos_token_ids)
            proposal = self.proposer.propose(seq.all_token_ids, room, stops)
            if proposal:
                drafts[seq.request_id] = proposal
        return drafts

    def verify(
        self,
        sampler: TokenSampler,
        logits: torch.Tensor,
        chunks: list[ScheduledChunk],
        first_rows: list[int],
        picked: dict[str, SampledToken],
    ) -> dict[str, list[SampledToken]]:
        """Tokens after the first for each drafted chunk: position i's logits are sampled while every token
        before it equalled its draft. `logits` has 1 + len(drafts) rows per sampling chunk, from `first_rows[j]`
        for `chunks[j]`; `picked` holds each row's first token (requests missing there failed and are skipped).
        Counts the drafts verified and accepted."""
        tokens: dict[str, list[SampledToken]] = {}
        active: list[tuple[ScheduledChunk, int]] = []
        for chunk, row in zip(chunks, first_rows, strict=True):
            rid = chunk.seq.request_id
            if chunk.draft_token_ids and rid in picked:
                tokens[rid] = [picked[rid]]
                active.append((chunk, row))
        depth = 0
        while active:
            # Still accepting: the token sampled at `depth` equals the draft there, so position depth + 1 counts.
            active = [
                (c, r) for c, r in active
                if depth < len(c.draft_token_ids) and tokens[c.seq.request_id][-1].token_id == c.draft_token_ids[depth]
            ]  # fmt: skip
            if not active:
                break
            rows = [
                SamplingRow(c.seq.request_id, c.seq.params, c.seq.prompt_token_ids,
                            c.seq.output_token_ids + [t.token_id for t in tokens[c.seq.request_id]])
                for c, _ in active
            ]  # fmt: skip
            index = torch.tensor([r + depth + 1 for _, r in active])
            try:
                sampled = sampler.sample(logits.index_select(0, index), rows)
            except Exception:
                logger.exception("sampling draft positions failed; keeping the tokens verified so far")
                break
            for (chunk, _), token in zip(active, sampled, strict=True):
                tokens[chunk.seq.request_id].append(token)
            depth += 1
        result = {}
        for chunk in chunks:
            rid = chunk.seq.request_id
            if rid in tokens:
                self.num_draft_tokens += len(chunk.draft_token_ids)
                self.num_accepted_tokens += len(tokens[rid]) - 1
                result[rid] = tokens[rid][1:]
        return result


def speculative_config(settings: Settings) -> SpeculativeConfig:
    """The `--speculative ngram` knobs of `settings`."""
    return SpeculativeConfig(
        num_tokens=settings.num_speculative_tokens, ngram_min=settings.ngram_min, ngram_max=settings.ngram_max,
        max_batch=settings.speculative_max_batch,
    )  # fmt: skip
