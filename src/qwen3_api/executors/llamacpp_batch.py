"""A step's entries as one llama.cpp batch: checked, flattened to (token, position, sequence id, wants logits) in
the order llama.cpp batches best, and the logits rows mapped back to the entries' order."""

from __future__ import annotations

import itertools

from qwen3_api.engine.protocols import BatchEntry
from qwen3_api.executors.batch_checks import check_positions

# (token id, position, sequence id, wants logits)
Token = tuple[int, int, int, bool]


def check_batch(batch: list[BatchEntry], *, n_outputs_max: int, n_ctx_seq: int, vocab_size: int) -> None:
    """Reject malformed entries before anything reaches llama.cpp, which would abort the process on some."""
    rows = sum(1 + e.num_draft_tokens for e in batch if e.need_logits)
    if rows > n_outputs_max:
        raise ValueError(
            f"the batch asks for {rows} logits rows, more than the {n_outputs_max} this context reserved "
            "(max_num_seqs x (1 + max_draft_tokens))"
        )
    check_positions(batch, n_ctx_seq, f"the {n_ctx_seq} cells of a llama.cpp sequence")
    seen: set[str] = set()
    for i, entry in enumerate(batch):
        if not 0 <= entry.num_draft_tokens < len(entry.token_ids):
            drafts, total = entry.num_draft_tokens, len(entry.token_ids)
            raise ValueError(f"batch entry {i} has {drafts} draft tokens among {total} tokens")
        if entry.request_id in seen:
            raise ValueError(f"request {entry.request_id!r} appears twice in one batch")
        seen.add(entry.request_id)
        bad = [t for t in entry.token_ids if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"batch entry {i} has token ids outside [0, {vocab_size}): {bad[:5]}")


def flatten(batch: list[BatchEntry], seq_ids: list[int], keep_order: bool) -> tuple[list[Token], list[int] | None]:
    """The batch's tokens, and for each logits row of them its row in batch order (None: the same order).

    Unless `keep_order`, entries go in sequence-id order: with per-sequence KV llama.cpp packs only runs of
    consecutive sequence ids into one physical batch, and each extra one reads every weight again. (The shared pool
    takes any order; its cells, and so its logits, follow the order, so it keeps the batch's.)"""
    order = list(range(len(batch))) if keep_order else sorted(range(len(batch)), key=seq_ids.__getitem__)
    tokens: list[Token] = []
    for index in order:
        entry, seq_id = batch[index], seq_ids[index]
        first_output = len(entry.token_ids) - 1 - entry.num_draft_tokens
        for i, token_id in enumerate(entry.token_ids):
            tokens.append((token_id, entry.start_position + i, seq_id, entry.need_logits and i >= first_output))
    return tokens, None if order == sorted(order) else _rows_in_batch_order(batch, order)


def _rows_in_batch_order(batch: list[BatchEntry], order: list[int]) -> list[int]:
    """For entries decoded in `order`, the batch-order logits row of each output row."""
    widths = [1 + e.num_draft_tokens if e.need_logits else 0 for e in batch]
    starts = [0, *itertools.accumulate(widths)]
    return [starts[index] + k for index in order for k in range(widths[index])]
