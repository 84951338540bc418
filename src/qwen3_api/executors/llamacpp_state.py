"""Retained llama.cpp sequences out of and back into a context, through llama.cpp's per-sequence state API
(`llama_state_seq_get_data` / `llama_state_seq_set_data`): each sequence's KV cells with their positions, read
into and written from one flat uint8 tensor, so a snapshot is copied once."""

from __future__ import annotations

import ctypes
import logging
from typing import Any

import torch

from qwen3_api.engine.protocols import SequenceStates
from qwen3_api.executors.slot_pool import SlotPool

logger = logging.getLogger(__name__)


def _pointer(tensor: torch.Tensor, offset: int) -> Any:
    return ctypes.cast(tensor.data_ptr() + offset, ctypes.POINTER(ctypes.c_uint8))


def read_retained(lib: Any, ctx: Any, pool: SlotPool, max_bytes: int) -> SequenceStates:
    """The pool's retained sequences, hottest first, as many as fit in `max_bytes` with their token ids (4 bytes
    each) and offsets (a sequence that does not fit is skipped; colder, smaller ones may still be taken)."""
    chosen: list[tuple[int, list[int], int]] = []  # seq id, tokens, state size
    total = 0
    cost = 2 * 8  # the two offset lists' leading zeros
    for slot in pool.hottest_retained():
        size = int(lib.llama_state_seq_get_size(ctx, slot.seq_id))
        more = size + 4 * len(slot.tokens) + 2 * 8
        if size and cost + more <= max_bytes:
            chosen.append((slot.seq_id, list(slot.tokens), size))
            total += size
            cost += more
    states = torch.empty(total, dtype=torch.uint8)
    offsets = [0]
    for seq_id, _, size in chosen:
        written = int(lib.llama_state_seq_get_data(ctx, _pointer(states, offsets[-1]), size, seq_id))
        if written != size:
            raise RuntimeError(f"llama.cpp wrote {written} of {size} state bytes for sequence {seq_id}")
        offsets.append(offsets[-1] + size)
    return SequenceStates([tokens for _, tokens, _ in chosen], states, offsets)


def write_retained(
    lib: Any, ctx: Any, memory: Any, pool: SlotPool, snapshot: SequenceStates, *, max_tokens_per_seq: int,
    max_total_tokens: int,
) -> tuple[int, int]:  # fmt: skip
    """Restore `snapshot`'s sequences (hottest first) into empty slots and retain them in `pool`, while they fit
    (`max_tokens_per_seq` each, `max_total_tokens` in all); returns (sequences, tokens) restored. A state
    llama.cpp refuses, or whose positions do not match its tokens, is dropped (one log line in all)."""
    restored = tokens_in = 0
    refused = []
    for i, tokens in enumerate(snapshot.tokens):
        if not tokens or len(tokens) > max_tokens_per_seq or tokens_in + len(tokens) > max_total_tokens:
            continue
        seq_id = pool.take_empty()
        if seq_id is None:
            break
        begin, end = snapshot.offsets[i], snapshot.offsets[i + 1]
        read = int(lib.llama_state_seq_set_data(ctx, _pointer(snapshot.states, begin), end - begin, seq_id))
        positions = (lib.llama_memory_seq_pos_min(memory, seq_id), lib.llama_memory_seq_pos_max(memory, seq_id))
        if read != end - begin or positions != (0, len(tokens) - 1):
            lib.llama_memory_seq_rm(memory, seq_id, 0, -1)
            pool.put_back_empty(seq_id)
            refused.append(f"#{i} (read {read} of {end - begin} bytes, positions {positions[0]}..{positions[1]} "
                           f"for {len(tokens)} tokens)")  # fmt: skip
            continue
        pool.adopt_retained(seq_id, tokens)
        restored += 1
        tokens_in += len(tokens)
    if refused:
        logger.warning("prefix cache: llama.cpp refused %d stored sequences: %s", len(refused), "; ".join(refused))
    return restored, tokens_in
