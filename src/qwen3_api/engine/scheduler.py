"""Continuous-batching scheduler: which sequences run this step, and how many tokens each. Pure Python.

Each step, within a per-step token budget:
  1. every decoding sequence gets its 1 token, oldest admitted first;
  2. every partly prefilled sequence gets its next chunk (chunked prefill);
  3. waiting sequences are admitted FIFO while `max_num_seqs`, the budget and free blocks allow.
Decodes go first so that a long prompt only ever takes what is left of the budget and never stalls them.

When a running sequence needs a block and none is free, the most recently admitted sequence is preempted by
recompute: its blocks are freed and it goes back to the front of the waiting queue keeping its output tokens,
so once readmitted it recomputes prompt + output (largely from the prefix cache) and continues unchanged.

Prefix groups: siblings of an n>1 request share a prompt. While one member of a group is still computing the
cacheable part of its prompt (its full blocks before the last token), the other members stay waiting, keeping
their place at the head of the queue while requests behind them may be admitted. Once admitted they take
those blocks from the prefix cache instead of prefilling the prompt n times. (Without prefix caching the rule
is off: waiting would gain nothing.)
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

from qwen3_api.engine.kv_cache import KVCacheManager, KVCacheStats
from qwen3_api.engine.outputs import FinishReason
from qwen3_api.engine.sequence import Sequence, SequenceStatus
from qwen3_api.errors import ContextLengthExceededError, EngineError, InvalidRequestError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    """Batching limits; validated on construction."""

    max_num_seqs: int  # sequences in the running set at once
    max_num_batched_tokens: int  # tokens computed per step, over all sequences
    block_size: int
    max_model_len: int  # prompt + output tokens of one sequence
    eos_token_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size", "max_model_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            # Otherwise some running sequences could not decode in a step, and the same ones would starve.
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs "
                f"({self.max_num_seqs}) so that every running sequence can decode each step"
            )
        if not isinstance(self.eos_token_ids, tuple) or any(
            isinstance(t, bool) or not isinstance(t, int) for t in self.eos_token_ids
        ):
            raise ValueError(f"eos_token_ids must be a tuple of ints, got {self.eos_token_ids!r}")


@dataclass(frozen=True)
class ScheduledChunk:
    """Compute `seq.all_token_ids[start_position : start_position + num_new_tokens]` this step.

    The executor writes their K/V at positions start_position.. through `seq.block_table`. `start_position`
    and `samples` are snapshots taken when the chunk is made, so they stay right after `update()` has
    advanced the sequence (e.g. for an engine building its outputs from the chunks).
    """

    seq: Sequence
    num_new_tokens: int
    # Speculative decoding: guesses of the tokens after this decode's one, computed (and their K/V written) after
    # it in the same forward, with logits at every position; `update` keeps the ones the sampler accepted.
    draft_token_ids: tuple[int, ...] = ()
    start_position: int = field(init=False)  # seq.num_computed_tokens when scheduled
    samples: bool = field(init=False)  # the chunk reaches the last token: a new token is sampled from it

    def __post_init__(self) -> None:
        object.__setattr__(self, "start_position", self.seq.num_computed_tokens)
        object.__setattr__(self, "samples", self.start_position + self.num_new_tokens == self.seq.num_tokens)


@dataclass
class SchedulerOutput:
    """One step's work: the chunks to compute (decodes first), and news for the executor's per-request state.

    `preempted` sequences lost their blocks and will recompute later; `finished_request_ids` lists requests
    that finished or were aborted since the previous step, whose per-request state (RNGs...) can be dropped.
    """

    chunks: list[ScheduledChunk]
    preempted: list[Sequence]
    finished_request_ids: list[str]

    @property
    def num_scheduled_tokens(self) -> int:
        return sum(chunk.num_new_tokens + len(chunk.draft_token_ids) for chunk in self.chunks)


class Scheduler:
    """Continuous batching with chunked prefill, prefix caching and preemption by recompute."""

    def __init__(self, config: SchedulerConfig, kv_cache: KVCacheManager) -> None:
        if kv_cache.block_size != config.block_size:
            raise ValueError(
                f"KV cache block_size {kv_cache.block_size} != scheduler block_size {config.block_size}"
            )
        if kv_cache.num_blocks * kv_cache.block_size < config.max_model_len:
            # A lone sequence of max_model_len tokens must always fit, or preempting it would loop forever.
            raise ValueError(
                f"KV cache holds {kv_cache.num_blocks * kv_cache.block_size} tokens, fewer than max_model_len "
                f"({config.max_model_len})"
            )
        self.config = config
        self.kv_cache = kv_cache
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []  # in admission order: preemption takes from the end
        self._requests: dict[str, Sequence] = {}  # every unfinished sequence, waiting or running
        self._finished_ids: list[str] = []
        self.num_preemptions = 0  # since start, for stats and tests

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def kv_stats(self) -> KVCacheStats:
        return self.kv_cache.stats

    def has_unfinished(self) -> bool:
        """True while any sequence is waiting or running."""
        return bool(self._requests)

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence at the back of the waiting queue."""
        if seq.request_id in self._requests:
            raise ValueError(f"request {seq.request_id} is already scheduled")
        if seq.status is not SequenceStatus.WAITING or seq.block_table or seq.num_computed_tokens:
            raise ValueError(f"request {seq.request_id} is not a fresh waiting sequence")
        if seq.num_prompt_tokens == 0:
            raise InvalidRequestError("the prompt must contain at least one token", "prompt")
        if seq.num_prompt_tokens + seq.params.max_tokens > self.config.max_model_len:
            # The engine rejects these before add(); this guard keeps an oversized sequence from never fitting.
            raise ContextLengthExceededError(
                seq.num_prompt_tokens, seq.params.max_tokens, self.config.max_model_len
            )
        self._requests[seq.request_id] = seq
        self._waiting.append(seq)

    def schedule(self) -> SchedulerOutput:
        """Pick this step's chunks: decodes, then prefill continuations, then newly admitted sequences."""
        chunks: list[ScheduledChunk] = []
        preempted: list[Sequence] = []
        budget = self.config.max_num_batched_tokens
        budget = self._schedule_decodes(budget, chunks, preempted)
        budget = self._schedule_prefill_chunks(budget, chunks, preempted)
        if not preempted:
            # Blocks just ran short: admitting more now would only preempt again next step.
            self._admit_waiting(budget, chunks)
        finished_ids, self._finished_ids = self._finished_ids, []
        return SchedulerOutput(chunks=chunks, preempted=preempted, finished_request_ids=finished_ids)

    def attach_drafts(self, output: SchedulerOutput, drafts: dict[str, list[int]]) -> None:
        """Give decode chunks of `output` draft tokens to verify (speculative decoding), as far as the step's token
        budget and free KV blocks allow; a draft never preempts anything, it is shortened or dropped instead."""
        budget = self.config.max_num_batched_tokens - output.num_scheduled_tokens
        for i, chunk in enumerate(output.chunks):
            proposal = drafts.get(chunk.seq.request_id)
            if not proposal or chunk.draft_token_ids or not chunk.samples or chunk.num_new_tokens != 1:
                continue
            seq = chunk.seq
            room = self.config.max_model_len - seq.num_tokens
            num = min(len(proposal), budget, room, self.kv_cache.num_allocatable_tokens(seq) - 1)
            if num <= 0 or not self.kv_cache.allocate(seq, 1 + num):
                continue
            output.chunks[i] = ScheduledChunk(seq, 1, tuple(proposal[:num]))
            budget -= num

    def update(
        self,
        output: SchedulerOutput,
        sampled: dict[str, int],
        ended: frozenset[str] = frozenset(),
        accepted: dict[str, list[int]] | None = None,
    ) -> list[Sequence]:
        """Record a computed step: advance progress, cache full blocks, append sampled tokens; return the finished.

        `sampled` maps request id to the token sampled for every chunk that `samples`. Requests in `ended` stop
        with their token (their grammar is complete), even with `ignore_eos`. `accepted` maps a chunk with drafts
        to the leading drafts the sampler accepted: they are computed already and come before the sampled token.
        """
        finished: list[Sequence] = []
        for chunk in output.chunks:
            seq = chunk.seq
            if seq.status is not SequenceStatus.RUNNING:
                continue  # aborted after schedule(): its blocks are already freed
            if seq.num_computed_tokens != chunk.start_position:
                raise EngineError(f"step for request {seq.request_id} is stale or was already applied")
            if not chunk.samples:
                seq.num_computed_tokens += chunk.num_new_tokens
                self.kv_cache.cache_computed_blocks(seq)
                continue
            token = sampled.get(seq.request_id)
            if token is None:
                raise EngineError(f"the executor sampled no token for request {seq.request_id}")
            kept = (accepted or {}).get(seq.request_id, []) if chunk.draft_token_ids else []
            if list(chunk.draft_token_ids[: len(kept)]) != kept:
                raise EngineError(f"request {seq.request_id}: accepted tokens are not its drafts")
            seq.num_computed_tokens += chunk.num_new_tokens + len(kept)
            reason = None
            for i, new_token in enumerate([*kept, token]):
                seq.output_token_ids.append(new_token)
                last = i == len(kept)
                reason = FinishReason.STOP if last and seq.request_id in ended else self._finish_reason(seq, new_token)
                if reason is not None:
                    break
            self.kv_cache.cache_computed_blocks(seq)
            if reason is not None:
                self._finish(seq, reason)
                finished.append(seq)
        return finished

    def abort(self, request_id: str) -> Sequence | None:
        """Finish a waiting or running request with ABORT, freeing its blocks now; None if it is unknown."""
        return self.finish(request_id, FinishReason.ABORT)

    def finish(self, request_id: str, reason: FinishReason) -> Sequence | None:
        """Finish a request for a reason found outside the scheduler (abort, a stop string); None if unknown."""
        seq = self._requests.get(request_id)
        if seq is None:
            return None
        self._finish(seq, reason)
        return seq

    def _schedule_decodes(self, budget: int, chunks: list[ScheduledChunk], preempted: list[Sequence]) -> int:
        index = 0
        while index < len(self._running) and budget > 0:
            seq = self._running[index]
            if seq.num_tokens - seq.num_computed_tokens != 1:
                index += 1
                continue
            while not self.kv_cache.allocate(seq, 1):
                # Sequences behind `index` are not scheduled yet, so the newest can be preempted safely.
                victim = self._running.pop()
                self._preempt(victim, preempted)
                if victim is seq:
                    break
            else:
                chunks.append(ScheduledChunk(seq, 1))
                budget -= 1
                index += 1
        return budget

    def _schedule_prefill_chunks(
        self, budget: int, chunks: list[ScheduledChunk], preempted: list[Sequence]
    ) -> int:
        index = 0
        while index < len(self._running) and budget > 0:
            seq = self._running[index]
            remaining = seq.num_tokens - seq.num_computed_tokens
            if remaining <= 1:
                index += 1  # a decode, scheduled above
                continue
            # A prefill chunk can be any size: take what fits rather than preempting for the whole chunk.
            num_new = min(remaining, budget, self.kv_cache.num_allocatable_tokens(seq))
            if num_new == 0:
                # No block free at all. Preempt the newest prefilling sequence (possibly this one); decodes are
                # already in this step's batch, and without this, prefills alone could wait on each other forever.
                victim_index = max(
                    i
                    for i in range(index, len(self._running))
                    if self._running[i].num_tokens - self._running[i].num_computed_tokens > 1
                )
                self._preempt(self._running.pop(victim_index), preempted)
                continue
            if not self.kv_cache.allocate(seq, num_new):
                raise RuntimeError(f"KV cache refused {num_new} tokens it reported allocatable")
            chunks.append(ScheduledChunk(seq, num_new))
            budget -= num_new
            index += 1
        return budget

    def _admit_waiting(self, budget: int, chunks: list[ScheduledChunk]) -> None:
        warming_groups = {seq.prefix_group for seq in self._running if self._warms_group_prefix(seq)}
        held: list[Sequence] = []
        while self._waiting and budget > 0 and len(self._running) < self.config.max_num_seqs:
            seq = self._waiting[0]
            if seq.prefix_group is not None and seq.prefix_group in warming_groups:
                held.append(self._waiting.popleft())
                continue
            hit = self.kv_cache.lookup(seq)
            num_new = min(seq.num_tokens - hit.num_tokens, budget)
            if not self.kv_cache.admit(seq, hit, num_new):
                break  # strict FIFO: later (smaller) requests do not overtake one that does not fit
            self._waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            if seq.queue_time is None:
                seq.queue_time = time.monotonic() - seq.arrival_time
            seq.num_computed_tokens = hit.num_tokens
            if seq.num_preemptions == 0:  # readmission finds the sequence's own blocks: not a prefix hit
                seq.num_cached_tokens = min(hit.num_tokens, seq.num_prompt_tokens)
            self._running.append(seq)
            chunks.append(ScheduledChunk(seq, num_new))
            budget -= num_new
            if self._warms_group_prefix(seq):
                warming_groups.add(seq.prefix_group)
        self._waiting.extendleft(reversed(held))

    def _warms_group_prefix(self, seq: Sequence) -> bool:
        """True while `seq` computes prompt blocks its prefix-group siblings could take from the cache.

        That is the prompt up to the last block boundary before its last token, the most a hit can cover; the
        rest each sibling computes anyway, so waiting for it would gain nothing.
        """
        if seq.prefix_group is None or not self.kv_cache.reuses_prefixes:
            return False
        cacheable = (seq.num_prompt_tokens - 1) // self.config.block_size * self.config.block_size
        return seq.num_computed_tokens < cacheable

    def _preempt(self, seq: Sequence, preempted: list[Sequence]) -> None:
        """Free a running sequence's blocks and requeue it at the front; it recomputes when readmitted."""
        self.kv_cache.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self._waiting.appendleft(seq)
        preempted.append(seq)
        logger.info(
            "request %s preempted (KV cache full, %d running); it will recompute %d tokens",
            seq.request_id,
            len(self._running),
            seq.num_tokens,
        )

    def _finish_reason(self, seq: Sequence, token: int) -> FinishReason | None:
        params = seq.params
        if (token in self.config.eos_token_ids and not params.ignore_eos) or token in params.stop_token_ids:
            return FinishReason.STOP
        if len(seq.output_token_ids) >= params.max_tokens:
            return FinishReason.LENGTH
        return None

    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        if seq.status is SequenceStatus.RUNNING:
            self._running.remove(seq)
        else:
            self._waiting.remove(seq)
        self.kv_cache.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        del self._requests[seq.request_id]
        self._finished_ids.append(seq.request_id)
