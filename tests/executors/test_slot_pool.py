"""The llama.cpp slot planner: retained slots, takeover and copy of cached prefixes, eviction, promises, and the
host-memory cache that saves and restores sequences a slot loses."""

from __future__ import annotations

import pytest

from qwen3_api.executors.host_states import HostStateCache
from qwen3_api.executors.slot_pool import SlotOp, SlotPool, common_prefix_length

BASE = list(range(1000, 1100))  # a 100-token prompt


def pool(num_slots: int = 4, *, reuse: bool = True) -> SlotPool:
    return SlotPool(num_slots, reuse_prefixes=reuse, min_reuse_tokens=16, min_copy_tokens=64)


def run_request(p: SlotPool, request_id: str, tokens: list[int]) -> int:
    """Assign a slot (with whatever lookup promised), record the tokens as decoded; return the seq id."""
    hit = p.lookup(request_id, tokens)
    p.assign([request_id])
    slot = p.slot_of(request_id)
    assert slot is not None and slot.num_cached == hit
    p.record(request_id, hit, tokens[hit:])
    return slot.seq_id


def test_common_prefix_length() -> None:
    assert common_prefix_length([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_length([1, 2], [1, 2, 3]) == 2
    assert common_prefix_length([], [1]) == 0
    assert common_prefix_length([5], [6]) == 0


def test_a_finished_requests_slot_is_taken_over_by_a_prompt_that_extends_it() -> None:
    p = pool()
    seq = run_request(p, "a", BASE)
    assert p.release("a") is None and p.num_retained == 1
    follow = BASE + [1, 2, 3]
    assert p.lookup("b", follow) == 100
    assert p.assign(["b"]) == [SlotOp("trim", seq, 100)]
    slot = p.slot_of("b")
    assert slot is not None and slot.seq_id == seq and slot.tokens == BASE and p.num_retained == 0


def test_a_hit_never_covers_the_last_token() -> None:
    p = pool()
    run_request(p, "a", BASE)
    p.release("a")
    assert p.lookup("b", BASE) == 99  # the last token is computed again, for its logits
    p.assign(["b"])
    slot = p.slot_of("b")
    assert slot is not None and slot.num_cached == 99


def test_short_common_prefixes_are_not_reused() -> None:
    p = pool()
    retained = run_request(p, "a", BASE)
    p.release("a")
    assert p.lookup("b", BASE[:15] + [7] * 50) == 0
    assert p.assign(["b"]) == []  # an empty slot, and the retained prefix survives
    slot = p.slot_of("b")
    assert slot is not None and slot.seq_id != retained and p.num_retained == 1


def test_a_running_requests_prefix_is_copied_only_when_long() -> None:
    p = pool()
    source = run_request(p, "a", BASE)  # still running
    assert p.lookup("short", BASE[:40] + [1]) == 0  # 40 < min_copy_tokens
    assert p.lookup("long", BASE[:80] + [1]) == 80
    ops = p.assign(["long"])
    slot = p.slot_of("long")
    assert slot is not None and slot.seq_id != source
    assert ops == [SlotOp("copy", slot.seq_id, 80, source)]
    assert slot.tokens == BASE[:80]


def test_two_requests_wanting_one_retained_slot_copy_first_then_take_over() -> None:
    p = pool()
    source = run_request(p, "a", BASE)
    p.release("a")
    assert p.lookup("x", BASE[:70] + [1]) == 70  # keeps most of the slot: promised a takeover
    # The slot is promised already: the second request only gets it through a copy, so it needs a long prefix.
    assert p.lookup("y", BASE[:90] + [2]) == 90
    ops = p.assign(["x", "y"])
    x, y = p.slot_of("x"), p.slot_of("y")
    assert x is not None and y is not None
    assert x.seq_id == source and y.seq_id != source
    # The copy is queued before the trim that drops the cells it needs.
    assert ops == [SlotOp("copy", y.seq_id, 90, source), SlotOp("trim", source, 70)]
    assert x.tokens == BASE[:70] and y.tokens == BASE[:90]


def test_a_short_match_does_not_wipe_a_long_retained_conversation_while_a_slot_is_empty() -> None:
    p = pool()
    conversation = BASE * 3  # 300 tokens
    source = run_request(p, "a", conversation)
    p.release("a")
    # 70 of 300 tokens: copied into an empty slot, the conversation stays retained for its next turn.
    assert p.lookup("new-chat", BASE[:70] + [5]) == 70
    ops = p.assign(["new-chat"])
    slot = p.slot_of("new-chat")
    assert slot is not None and slot.seq_id != source and p.num_retained == 1
    assert ops == [SlotOp("copy", slot.seq_id, 70, source)]
    assert p.lookup("next-turn", conversation + [9]) == 300
    # Too short to copy (< 64) and too short to take the slot over: computed from scratch.
    assert p.lookup("tiny", BASE[:20] + [5]) == 0


def test_the_last_reader_takes_its_source_over_when_no_slot_is_left() -> None:
    p = pool(num_slots=3)
    live = run_request(p, "r", [7] * 100)  # still running
    retained = run_request(p, "a", BASE * 2)
    p.release("a")
    assert p.lookup("y", [7] * 80 + [1]) == 80  # from the running request: a copy
    assert p.lookup("x", BASE[:70] + [1]) == 70  # 70 of 200 with an empty slot around: a copy too
    ops = p.assign(["y", "x"])
    y, x = p.slot_of("y"), p.slot_of("x")
    assert y is not None and x is not None
    # y's copy took the empty slot; x is the only reader of its source, so it takes it over.
    assert ops == [SlotOp("copy", y.seq_id, 80, live), SlotOp("trim", retained, 70)]
    assert x.seq_id == retained and x.tokens == BASE[:70]


def test_new_requests_evict_the_least_recently_retained_slot_but_not_a_promised_one() -> None:
    p = pool(num_slots=3)
    first = run_request(p, "a", BASE)
    second = run_request(p, "b", [7] * 50)
    third = run_request(p, "c", [8] * 50)
    for request_id in ("a", "b", "c"):
        p.release(request_id)
    assert p.num_free == 3 and p.num_retained == 3
    # "a" (released first) is promised to "x"; "y" and "z" take the next least recently released slots.
    assert p.lookup("x", BASE + [1]) == 100
    ops = p.assign(["y", "x", "z"])
    slots = {r: p.slot_of(r) for r in ("x", "y", "z")}
    assert {r: s.seq_id for r, s in slots.items() if s} == {"x": first, "y": second, "z": third}
    assert SlotOp("trim", second, 0) in ops and SlotOp("trim", third, 0) in ops
    assert SlotOp("trim", first, 100) in ops


def test_a_promise_lasts_one_step() -> None:
    p = pool()
    run_request(p, "a", BASE)
    p.release("a")
    assert p.lookup("b", BASE + [1]) == 100
    p.assign(["other"])  # "b" was not admitted this step
    assert p.assign(["b"]) == []  # an empty slot, nothing reused; the retained one is untouched
    slot = p.slot_of("b")
    assert slot is not None and slot.num_cached == 0 and p.num_retained == 1


def test_without_reuse_slots_are_cleared_at_release() -> None:
    p = pool(reuse=False)
    seq = run_request(p, "a", BASE)
    assert p.release("a") == SlotOp("trim", seq, 0)
    assert p.num_retained == 0 and p.lookup("b", BASE + [1]) == 0


def test_record_overwrites_from_the_start_position() -> None:
    p = pool()
    run_request(p, "a", [1, 2, 3, 4])
    p.record("a", 2, [9])
    slot = p.slot_of("a")
    assert slot is not None and slot.tokens == [1, 2, 9]


def test_running_out_of_slots_is_an_error() -> None:
    p = pool(num_slots=1)
    run_request(p, "a", [1])
    with pytest.raises(RuntimeError, match="sequences are taken"):
        p.assign(["b"])


def test_bad_thresholds_are_rejected() -> None:
    with pytest.raises(ValueError):
        SlotPool(2, reuse_prefixes=True, min_reuse_tokens=32, min_copy_tokens=16)
    with pytest.raises(ValueError):
        SlotPool(0, reuse_prefixes=True)


def test_truncate_forgets_tokens_and_drops_their_cells() -> None:
    p = pool()
    seq = run_request(p, "a", [1, 2, 3, 4])
    assert p.truncate("a", 1) == SlotOp("trim", seq, 1)
    slot = p.slot_of("a")
    assert slot is not None and slot.tokens == [1]


def test_a_shared_pool_evicts_retained_slots_least_recent_first_until_the_batch_fits() -> None:
    p = pool(3)
    p.assign(["a", "b", "c"])
    seq_ids = {}
    for request_id, n in (("a", 100), ("b", 50), ("c", 30)):
        p.record(request_id, 0, list(range(n)))
        seq_ids[request_id] = p.slot_of(request_id).seq_id  # type: ignore[union-attr]
    p.release("a")
    p.release("b")
    # 180 tokens held; at most 100 may stay: "a" (released first) goes, which is enough.
    assert p.evict_retained(100) == [SlotOp("trim", seq_ids["a"], 0)]
    assert p.num_retained == 1 and p.num_free == 2
    assert p.evict_retained(1000) == []
    # Live slots are never evicted: only "b" can go.
    assert p.evict_retained(0) == [SlotOp("trim", seq_ids["b"], 0)] and p.num_retained == 0


def test_restored_slots_are_retained_hottest_last_and_reused() -> None:
    p = pool()
    hot, cold = p.take_empty(), p.take_empty()
    assert hot is not None and cold is not None
    p.adopt_retained(hot, BASE)  # restored hottest first
    p.adopt_retained(cold, [7] * 50)
    assert [s.seq_id for s in p.hottest_retained()] == [hot, cold] and p.num_free == 4
    assert p.evict_retained(100) == [SlotOp("trim", cold, 0)]  # the colder one goes first
    assert p.lookup("b", BASE + [1]) == 100  # the restored prefix is hit like a finished request's
    p.assign(["b"])
    assert p.slot_of("b").seq_id == hot  # type: ignore[union-attr]
    before = p.num_retentions
    p.release("b")
    assert p.num_retentions == before + 1


def live_runs(p: SlotPool, request_ids: list[str]) -> int:
    """Runs of consecutive sequence ids among the requests' slots (what llama.cpp packs into one physical batch)."""
    ids = sorted(slot.seq_id for r in request_ids if (slot := p.slot_of(r)) is not None)
    return 1 + sum(1 for a, b in zip(ids, ids[1:], strict=False) if b != a + 1)


def test_a_compact_pool_keeps_live_sequences_in_one_run_as_requests_come_and_go() -> None:
    for compact, worst in ((True, 1), (False, 3)):
        p = SlotPool(8, reuse_prefixes=True, min_reuse_tokens=16, min_copy_tokens=64, compact=compact)
        live: list[str] = []
        most = 0
        # Two requests at a time finish out of order; each is replaced by a new one with an unrelated prompt.
        for step in range(12):
            while len(live) < 4:
                request_id = f"r{step}-{len(live)}"
                run_request(p, request_id, [5000 + step * 10 + len(live)] * 20)
                live.append(request_id)
            most = max(most, live_runs(p, live))
            for request_id in (live[1], live[3]) if step % 2 else (live[0], live[2]):
                p.release(request_id)
                live.remove(request_id)
        assert most == worst if compact else most >= worst, (compact, most)


def test_a_compact_pool_fills_a_hole_and_otherwise_extends_a_run_from_an_empty_slot() -> None:
    for compact in (True, False):
        p = SlotPool(6, reuse_prefixes=True, min_reuse_tokens=16, min_copy_tokens=64, compact=compact)
        for request_id, token in (("a", 1), ("b", 2), ("c", 3)):
            run_request(p, request_id, [token] * 40)
        p.release("b")  # slot 1 keeps b's conversation; live: 0 and 2
        run_request(p, "d", [9] * 40)
        slot = p.slot_of("d")
        assert slot is not None
        if not compact:  # an empty slot first: the hole at 1 stays, two physical batches every step
            assert slot.seq_id == 3 and live_runs(p, ["a", "c", "d"]) == 2
            continue
        assert slot.seq_id == 1 and p.num_retained == 0 and live_runs(p, ["a", "c", "d"]) == 1
        p.release("a")  # slot 0 keeps a's conversation; live: 1 and 2; empty: 3, 4, 5
        run_request(p, "e", [11] * 40)
        slot = p.slot_of("e")
        assert slot is not None and slot.seq_id == 3  # extends the run from an empty slot; a's cells stay
        assert p.num_retained == 1 and p.lookup("a2", [1] * 40 + [7]) == 40


# -- with a host-memory cache: cells a slot loses are saved and restored -----------------------------------------


def host_pool(num_slots: int = 1) -> tuple[SlotPool, HostStateCache]:
    host = HostStateCache(10_000)
    return SlotPool(num_slots, reuse_prefixes=True, min_reuse_tokens=16, min_copy_tokens=64, host=host), host


def run_ops(host: HostStateCache, ops: list[SlotOp]) -> list[SlotOp]:
    """Carry out the saves as the runner does (a stand-in state of one byte per token), return the ops."""
    for op in ops:
        if op.kind == "save":
            host.put(list(op.tokens), f"state of {op.seq_id}", len(op.tokens))
    return ops


def host_request(p: SlotPool, host: HostStateCache, request_id: str, tokens: list[int]) -> list[SlotOp]:
    hit = p.lookup(request_id, tokens)
    ops = run_ops(host, p.assign([request_id]))
    slot = p.slot_of(request_id)
    assert slot is not None and slot.num_cached == hit
    p.record(request_id, hit, tokens[hit:])
    return ops


def test_a_conversation_whose_slot_another_takes_is_saved_and_its_next_turn_restores_it() -> None:
    p, host = host_pool(1)
    host_request(p, host, "a", BASE)
    p.release("a")
    other = list(range(5000, 5040))
    assert host_request(p, host, "b", other) == [SlotOp("save", 0, 100, tokens=tuple(BASE)), SlotOp("trim", 0, 0)]
    p.release("b")
    turn2 = BASE + [1, 2, 3]
    assert p.lookup("a2", turn2) == 100
    ops = run_ops(host, p.assign(["a2"]))
    entry = host.best_match(BASE, 100)[0]
    assert entry is not None and entry.state == "state of 0"
    assert ops == [SlotOp("save", 0, 40, tokens=tuple(other)), SlotOp("trim", 0, 0),
                   SlotOp("restore", 0, 100, entry=entry)]  # fmt: skip
    slot = p.slot_of("a2")
    assert slot is not None and slot.tokens == BASE
    assert len(host) == 2  # both chats are in host memory now


def test_a_takeover_that_cuts_a_conversation_saves_it_first() -> None:
    p, host = host_pool(1)
    host_request(p, host, "a", BASE)
    p.release("a")
    shares_20 = BASE[:20] + [7] * 30
    assert p.lookup("c", shares_20) == 20  # no empty slot: "c" takes the slot over
    assert run_ops(host, p.assign(["c"])) == [SlotOp("save", 0, 100, tokens=tuple(BASE)), SlotOp("trim", 0, 20)]
    assert host.holds(BASE)


def test_cells_the_host_cache_already_holds_are_not_saved_again() -> None:
    p, host = host_pool(1)
    host_request(p, host, "a", BASE)
    p.release("a")
    host_request(p, host, "b", list(range(5000, 5040)))
    p.release("b")
    # "r" restores 60 tokens of "a" and computes the 61st: all of it is in the saved entry already.
    assert host_request(p, host, "r", BASE[:61])[-1].kind == "restore"
    p.release("r")
    assert host_request(p, host, "s", list(range(6000, 6040))) == [SlotOp("trim", 0, 0)]


def test_a_slot_holding_the_prefix_wins_a_tie_with_the_host_cache() -> None:
    p, host = host_pool(2)
    host.put(BASE, "saved", 100)
    host_request(p, host, "a", BASE)  # restored from host memory into an empty slot
    p.release("a")
    assert p.lookup("b", BASE + [5]) == 100
    assert p.assign(["b"]) == [SlotOp("trim", 0, 100)]  # a takeover: no copy back


def test_short_saved_prefixes_are_not_restored_and_a_pool_without_reuse_keeps_no_host_cache() -> None:
    p, host = host_pool(1)
    host.put(BASE, "saved", 100)
    assert p.lookup("x", BASE[:15] + [9, 9]) == 0
    no_reuse = SlotPool(1, reuse_prefixes=False, host=HostStateCache(10_000))
    assert no_reuse.host is None and no_reuse.lookup("y", BASE) == 0


def test_a_restore_goes_to_a_slot_no_copy_reads_in_the_same_step() -> None:
    """A restore writes its cells at once and a copy reads its source at the next decode: "r" must not land on
    the slot "a" copies from, though that one is the least recently used."""
    host = HostStateCache(10_000)
    p = SlotPool(3, reuse_prefixes=True, min_reuse_tokens=16, min_copy_tokens=64, host=host)
    long = list(range(3000, 3200))  # 200 tokens
    source = run_request(p, "s", long)
    p.release("s")
    other = run_request(p, "t", list(range(4000, 4040)))
    p.release("t")
    saved = host.put(BASE, "saved", 100)
    assert p.lookup("a", long[:80] + [1, 2]) == 80  # a slot is empty and 80 < 200 / 2: a copy, not a takeover
    assert p.lookup("r", BASE + [3]) == 100
    ops = run_ops(host, p.assign(["a", "r"]))
    copy = next(op for op in ops if op.kind == "copy")
    restore = next(op for op in ops if op.kind == "restore")
    assert copy.src_seq_id == source and restore.seq_id == other and restore.entry is saved
