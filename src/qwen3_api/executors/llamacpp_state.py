"""llama.cpp sequences out of and back into a context, through llama.cpp's per-sequence state API
(`llama_state_seq_get_data` / `llama_state_seq_set_data`): a sequence's KV cells with their positions as bytes.
Retained sequences go to and come from the disk store as one flat uint8 tensor (a snapshot is copied once); one
sequence at a time goes to and comes from the host-memory cache (`host_states`)."""

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


def save_sequence(lib: Any, ctx: Any, seq_id: int, max_bytes: int) -> torch.Tensor | None:
    """The state of sequence `seq_id` as a uint8 tensor; None when it is empty or larger than `max_bytes`."""
    size = int(lib.llama_state_seq_get_size(ctx, seq_id))
    if not 0 < size <= max_bytes:
        return None
    state = torch.empty(size, dtype=torch.uint8)
    written = int(lib.llama_state_seq_get_data(ctx, _pointer(state, 0), size, seq_id))
    if written != size:
        raise RuntimeError(f"llama.cpp wrote {written} of {size} state bytes for sequence {seq_id}")
    return state


def restore_sequence(lib: Any, ctx: Any, memory: Any, seq_id: int, state: torch.Tensor, num_tokens: int) -> str:
    """Write `state` (of a sequence of `num_tokens` tokens) into the empty sequence `seq_id`; "" when llama.cpp
    took it, else why not (the sequence is cleared again then)."""
    read = int(lib.llama_state_seq_set_data(ctx, _pointer(state, 0), state.numel(), seq_id))
    positions = (lib.llama_memory_seq_pos_min(memory, seq_id), lib.llama_memory_seq_pos_max(memory, seq_id))
    if read == state.numel() and positions == (0, num_tokens - 1):
        return ""
    lib.llama_memory_seq_rm(memory, seq_id, 0, -1)
    return (f"read {read} of {state.numel()} bytes, positions {positions[0]}..{positions[1]} for {num_tokens} "
            "tokens")  # fmt: skip


def read_retained(lib: Any, ctx: Any, pool: SlotPool, max_bytes: int) -> SequenceStates:
    """The pool's retained sequences, hottest first, then its host cache's saved ones (most recent first), as
    many as fit in `max_bytes` with their token ids (4 bytes each) and offsets (a sequence that does not fit is
    skipped; colder, smaller ones may still be taken)."""
    chosen: list[tuple[int | torch.Tensor, list[int], int]] = []  # seq id or saved state, tokens, state size
    total = 0
    cost = 2 * 8  # the two offset lists' leading zeros
    sources: list[tuple[int | torch.Tensor, list[int], int]] = [
        (slot.seq_id, slot.tokens, int(lib.llama_state_seq_get_size(ctx, slot.seq_id)))
        for slot in pool.hottest_retained()
    ]
    saved = pool.host.entries() if pool.host is not None else []
    sources += [(e.state, e.tokens.tolist(), e.num_bytes) for e in saved if isinstance(e.state, torch.Tensor)]
    for source, tokens, size in sources:
        more = size + 4 * len(tokens) + 2 * 8
        if size and cost + more <= max_bytes:
            chosen.append((source, list(tokens), size))
            total += size
            cost += more
    states = torch.empty(total, dtype=torch.uint8)
    offsets = [0]
    for source, _, size in chosen:
        if isinstance(source, torch.Tensor):
            states[offsets[-1] : offsets[-1] + size] = source
        else:
            written = int(lib.llama_state_seq_get_data(ctx, _pointer(states, offsets[-1]), size, source))
            if written != size:
                raise RuntimeError(f"llama.cpp wrote {written} of {size} state bytes for sequence {source}")
        offsets.append(offsets[-1] + size)
    return SequenceStates([tokens for _, tokens, _ in chosen], states, offsets)


def write_retained(
    lib: Any, ctx: Any, memory: Any, pool: SlotPool, snapshot: SequenceStates, *, max_tokens_per_seq: int,
    max_total_tokens: int,
) -> tuple[int, int]:  # fmt: skip
    """Restore `snapshot`'s sequences (hottest first) into empty slots and retain them in `pool`, while they fit
    (`max_tokens_per_seq` each, `max_total_tokens` in all), and those that find no slot into its host cache (coldest
    first, so the hottest ends most recent) while it has room; returns (sequences, tokens) restored. A state
    llama.cpp refuses, or whose positions do not match its tokens, is dropped (one log line in all)."""
    restored = tokens_in = 0
    refused = []
    unplaced: list[int] = []
    for i, tokens in enumerate(snapshot.tokens):
        if not tokens or len(tokens) > max_tokens_per_seq:
            continue
        seq_id = pool.take_empty() if tokens_in + len(tokens) <= max_total_tokens else None
        if seq_id is None:
            unplaced.append(i)
            continue
        state = snapshot.states[snapshot.offsets[i] : snapshot.offsets[i + 1]]
        why = restore_sequence(lib, ctx, memory, seq_id, state, len(tokens))
        if why:
            pool.put_back_empty(seq_id)
            refused.append(f"#{i} ({why})")
            continue
        pool.adopt_retained(seq_id, tokens)
        restored += 1
        tokens_in += len(tokens)
    host = pool.host
    if host is not None:  # these are checked by llama.cpp when restored, not here
        kept = []
        for i in reversed(unplaced):
            state = snapshot.states[snapshot.offsets[i] : snapshot.offsets[i + 1]].clone()
            kept.append(host.put(snapshot.tokens[i], state, state.numel()))
        held = [entry for entry in kept if entry is not None and entry in host]  # a later put may evict one
        restored += len(held)
        tokens_in += sum(entry.num_tokens for entry in held)
    if refused:
        logger.warning("prefix cache: llama.cpp refused %d stored sequences: %s", len(refused), "; ".join(refused))
    return restored, tokens_in
