"""A step's entries as one llama.cpp batch: sequence-id order for per-sequence KV, logits rows mapped back to the
entries' order, and the checks that keep malformed entries away from llama.cpp."""

from __future__ import annotations

import pytest

from qwen3_api.engine.protocols import BatchEntry
from qwen3_api.executors.llamacpp_batch import check_batch, flatten


def entry(request_id: str, tokens: list[int], start: int = 0, logits: bool = True, drafts: int = 0) -> BatchEntry:
    return BatchEntry(tokens, start, [], logits, request_id, drafts)


def test_per_sequence_kv_decodes_in_sequence_id_order_and_maps_rows_back() -> None:
    # batch order: "a" (seq 2, one row), "b" (seq 0, no logits), "c" (seq 1, a draft: two rows)
    batch = [entry("a", [10], 5), entry("b", [20, 21], 0, logits=False), entry("c", [30, 31], 7, drafts=1)]
    tokens, destinations = flatten(batch, [2, 0, 1], keep_order=False)
    assert tokens == [(20, 0, 0, False), (21, 1, 0, False), (30, 7, 1, True), (31, 8, 1, True), (10, 5, 2, True)]
    # output rows come out for c, c, a; in batch order a's row is 0 and c's are 1 and 2
    assert destinations == [1, 2, 0]


def test_the_shared_pool_keeps_the_batch_order() -> None:
    batch = [entry("a", [10], 5), entry("c", [30], 7)]
    tokens, destinations = flatten(batch, [2, 1], keep_order=True)
    assert [t[2] for t in tokens] == [2, 1] and destinations is None
    # already in sequence-id order: nothing to map
    assert flatten(batch, [1, 2], keep_order=False)[1] is None


@pytest.mark.parametrize(
    ("bad", "message"),
    [(entry("x", []), "has no tokens"), (entry("x", [1], -1), "negative start_position"),
     (entry("x", [1, 2], 63), "reaches position 65, past the 64 cells"),
     (entry("x", [1], drafts=1), "1 draft tokens among 1"), (entry("x", [1, 100]), r"outside \[0, 100\)"),
     (entry("ok", [1]), "appears twice")],
)  # fmt: skip
def test_malformed_entries_are_refused(bad: BatchEntry, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_batch([entry("ok", [3]), bad], n_outputs_max=8, n_ctx_seq=64, vocab_size=100)


def test_more_logits_rows_than_reserved_are_refused() -> None:
    batch = [entry(str(i), [1]) for i in range(3)]
    check_batch(batch, n_outputs_max=3, n_ctx_seq=64, vocab_size=100)
    with pytest.raises(ValueError, match="3 logits rows, more than the 2"):
        check_batch(batch, n_outputs_max=2, n_ctx_seq=64, vocab_size=100)
