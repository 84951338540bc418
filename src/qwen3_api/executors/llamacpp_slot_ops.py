"""Carrying out the slot pool's plans on a llama.cpp context: giving a step's entries their sequences, then trims,
copies, and saves to and restores from the host-memory cache, in an order llama.cpp's memory allows.

Two facts of llama.cpp shape it:
- with per-sequence KV, `llama_memory_seq_cp` copies the cells' bookkeeping at once and their data at the start of
  the next `llama_decode`; a trim only drops bookkeeping. So a copy's source may be trimmed and computed into in
  the same step (the decode copies first), but never *written* before that decode: a restore
  (`llama_state_seq_set_data` writes at once) into a sequence a copy reads this step is done as a prefill instead,
  whose decode runs the pending copy before it writes;
- in one shared pool a restore needs free cells for the whole saved sequence (it trims to the promised length
  only after), so retained slots are evicted for that room before restores run.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import torch

from qwen3_api.engine.protocols import BatchEntry
from qwen3_api.errors import EngineError
from qwen3_api.executors.llamacpp_state import restore_sequence, save_sequence
from qwen3_api.executors.slot_pool import SlotOp, SlotPool

logger = logging.getLogger(__name__)


class SlotOps:
    """Runs `SlotOp`s on one context; `prefill(seq_id, tokens)` computes tokens into an empty sequence. Saves and
    restores go to the pool's host cache (the pool plans none where it is off)."""

    def __init__(self, lib: Any, ctx: Any, memory: Any, pool: SlotPool,
                 prefill: Callable[[int, list[int]], None]) -> None:  # fmt: skip
        self._lib, self._ctx, self._memory = lib, ctx, memory
        self._pool = pool
        self._prefill = prefill

    def run(self, op: SlotOp, copy_sources: frozenset[int] = frozenset()) -> None:
        """One operation; `copy_sources`: sequences whose data a copy queued in this step still has to read."""
        lib, memory = self._lib, self._memory
        if op.kind == "save":
            host = self._pool.host
            if host is None:
                raise EngineError("a save planned without a host cache")
            state = save_sequence(lib, self._ctx, op.seq_id, host.max_bytes)
            if state is not None:
                host.put(list(op.tokens), state, state.numel())
            return  # the trim that follows drops the cells
        if op.kind == "restore":
            self._restore(op, copy_sources)
            return
        if op.kind == "copy":
            # Between sequences of a non-unified cache llama.cpp copies whole sequences; the buffer copy itself
            # runs at the start of the next decode, before the batch writes any cell.
            lib.llama_memory_seq_cp(memory, op.src_seq_id, op.seq_id, -1, -1)
        lib.llama_memory_seq_rm(memory, op.seq_id, op.num_tokens, -1)

    def _restore(self, op: SlotOp, copy_sources: frozenset[int]) -> None:
        entry, host = op.entry, self._pool.host
        if entry is None or host is None or not isinstance(entry.state, torch.Tensor):
            raise EngineError(f"restore of sequence {op.seq_id} without a saved state")
        promised = entry.tokens[: op.num_tokens].tolist()
        if op.seq_id in copy_sources:
            self._prefill(op.seq_id, promised)
            return
        why = restore_sequence(self._lib, self._ctx, self._memory, op.seq_id, entry.state, entry.num_tokens)
        if why:
            # The request was promised these cells: compute them instead (a prefill, as without the cache).
            logger.warning("host cache: llama.cpp refused a saved sequence of %d tokens (%s); recomputing %d",
                           entry.num_tokens, why, op.num_tokens)  # fmt: skip
            host.discard(entry)
            self._prefill(op.seq_id, promised)
            return
        host.touch(entry)
        self._lib.llama_memory_seq_rm(self._memory, op.seq_id, op.num_tokens, -1)

    def assign_slots(self, batch: list[BatchEntry], pool_cells: int | None) -> list[int]:
        """Sequence ids of the batch's entries, giving new requests theirs (with any cached prefix) first; cells
        past an entry's `start_position` (a request recomputing from there) are dropped. `pool_cells`: the shared
        pool's size (None: per-sequence KV)."""
        pool = self._pool
        new_ids = [e.request_id for e in batch if pool.slot_of(e.request_id) is None]
        if len(new_ids) > pool.num_free:
            raise EngineError(f"{len(new_ids)} new requests but only {pool.num_free} free llama.cpp sequences")
        plan = pool.assign(new_ids)  # also drops promises of requests the scheduler did not admit
        try:
            self._run_plan(plan, pool_cells, sum(len(e.token_ids) for e in batch))
        except Exception:
            # The pool already counts the new requests' promised cells: clear their sequences, so that nothing
            # later trusts cells the plan did not finish making.
            for request_id in new_ids:
                if pool.slot_of(request_id) is not None:
                    with contextlib.suppress(Exception):
                        self.run(pool.truncate(request_id, 0))
            raise
        seq_ids = []
        for entry in batch:
            slot = pool.slot_of(entry.request_id)
            if slot is None:
                raise EngineError(f"request {entry.request_id} got no llama.cpp sequence")
            if entry.start_position > slot.num_cached:
                raise ValueError(
                    f"request {entry.request_id} starts at position {entry.start_position} but only "
                    f"{slot.num_cached} positions are cached in llama.cpp"
                )
            if entry.start_position < slot.num_cached:
                self.run(pool.truncate(entry.request_id, entry.start_position))
            seq_ids.append(slot.seq_id)
        return seq_ids

    def _run_plan(self, ops: list[SlotOp], pool_cells: int | None, wanted: int) -> None:
        """Everything but the restores in order; then, in a shared pool of `pool_cells`, evictions of retained
        slots until the step's `wanted` tokens and the cells restores hold beyond their promised tokens fit (live
        tokens fit by the engine's accounting, retained cells do not count there); then the restores."""
        restores = [op for op in ops if op.kind == "restore"]
        copy_sources = frozenset(op.src_seq_id for op in ops if op.kind == "copy")
        for op in ops:
            if op.kind != "restore":
                self.run(op)
        if pool_cells is not None:
            extra = sum(op.entry.num_tokens - op.num_tokens for op in restores if op.entry is not None)
            for op in self._pool.evict_retained(pool_cells - wanted - extra):
                self.run(op)
        for op in restores:
            self.run(op, copy_sources)
