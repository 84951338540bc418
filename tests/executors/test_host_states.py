"""The host-memory cache of finished sequences' llama.cpp states: matching, superseding, the byte budget."""

from __future__ import annotations

import pytest

from qwen3_api.executors.host_states import HostStateCache

CHAT = list(range(500, 600))  # a 100-token conversation


def test_the_longest_common_prefix_wins_and_is_capped_at_the_limit() -> None:
    cache = HostStateCache(1000)
    short = cache.put(CHAT[:40], "short", 10)
    other = cache.put([1, 2, 3] * 30, "other", 10)
    assert short is not None and other is not None
    assert cache.best_match(CHAT + [7], limit=100) == (short, 40)
    assert cache.best_match(CHAT[:30] + [9], limit=20) == (short, 20)
    assert cache.best_match([8] * 10, limit=9) == (None, 0)


def test_a_longer_turn_of_a_conversation_supersedes_the_earlier_one() -> None:
    cache = HostStateCache(1000)
    cache.put(CHAT[:60], "turn 1", 60)
    unrelated = cache.put([4] * 50, "other chat", 50)
    turn2 = cache.put(CHAT, "turn 2", 100)
    assert len(cache) == 2 and cache.num_bytes == 150
    assert [e.state for e in cache.entries()] == ["turn 2", "other chat"]
    assert cache.best_match(CHAT[:60] + [1], limit=61) == (turn2, 60)
    assert unrelated in cache.entries()


def test_the_least_recently_used_entries_go_first_past_the_budget() -> None:
    cache = HostStateCache(250)
    a = cache.put([1] * 20, "a", 100)
    b = cache.put([2] * 20, "b", 100)
    assert a is not None and b is not None
    cache.touch(a)  # "a" restored: now the most recent
    cache.put([3] * 20, "c", 100)
    assert [e.state for e in cache.entries()] == ["c", "a"] and cache.num_bytes == 200
    assert cache.num_evicted == 1 and cache.num_saved == 3 and cache.num_restored == 1
    assert a in cache and b not in cache


def test_a_state_larger_than_the_whole_budget_is_not_kept() -> None:
    cache = HostStateCache(100)
    cache.put([1] * 20, "a", 60)
    assert cache.put([2] * 20, "huge", 101) is None
    assert [e.state for e in cache.entries()] == ["a"]
    assert HostStateCache(0).put([1] * 20, "a", 1) is None
    with pytest.raises(ValueError, match="max_bytes"):
        HostStateCache(-1)


def test_holds_means_all_the_tokens_are_in_one_entry_and_marks_it_used() -> None:
    cache = HostStateCache(1000)
    cache.put(CHAT, "chat", 100)
    cache.put([4] * 50, "other", 50)
    assert cache.holds(CHAT[:70]) and cache.holds(CHAT)
    assert [e.state for e in cache.entries()] == ["chat", "other"]
    assert not cache.holds(CHAT + [1]) and not cache.holds(CHAT[:10] + [3])
