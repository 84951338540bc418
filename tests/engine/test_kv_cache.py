"""KVCacheManager: block accounting, prefix-cache hits and their cap, LRU eviction, statistics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from qwen3_api.engine.kv_cache import KVCacheManager, PrefixHit, hash_block
from qwen3_api.engine.sampling import SamplingParams
from qwen3_api.engine.sequence import Sequence

BLOCK = 4


def make_seq(request_id: str, tokens: list[int]) -> Sequence:
    return Sequence(request_id=request_id, prompt_token_ids=list(tokens), params=SamplingParams(max_tokens=4))


@pytest.fixture
def kv() -> Iterator[KVCacheManager]:
    """A 10-block cache; the test must hand every block back (checked after the test)."""
    manager = KVCacheManager(num_blocks=10, block_size=BLOCK)
    yield manager
    manager.check_invariants()
    assert manager.num_free_blocks == manager.num_blocks, "a test left blocks held"


def admit_and_compute(kv: KVCacheManager, seq: Sequence) -> PrefixHit:
    """Admit `seq` with whatever the cache offers, then mark its whole prompt computed and cached."""
    hit = kv.lookup(seq)
    assert kv.admit(seq, hit, seq.num_tokens - hit.num_tokens)
    seq.num_computed_tokens = seq.num_tokens
    kv.cache_computed_blocks(seq)
    return hit


def test_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        KVCacheManager(num_blocks=0, block_size=4)
    with pytest.raises(ValueError):
        KVCacheManager(num_blocks=4, block_size=0)


def test_allocate_and_free_account_for_every_block(kv: KVCacheManager) -> None:
    seq = make_seq("a", list(range(10)))
    assert kv.admit(seq, kv.lookup(seq), 6)
    assert len(seq.block_table) == 2 and kv.num_free_blocks == 8
    seq.num_computed_tokens = 6
    assert kv.allocate(seq, 2)  # tokens 6..7 still fit in block 2
    assert len(seq.block_table) == 2
    assert kv.allocate(seq, 3)  # tokens 6..8 need a third block
    assert len(seq.block_table) == 3 and kv.num_free_blocks == 7
    assert len(set(seq.block_table)) == 3
    assert kv.stats.usage == pytest.approx(0.3)
    kv.free(seq)
    assert seq.block_table == [] and kv.num_free_blocks == 10


def test_allocation_that_does_not_fit_changes_nothing(kv: KVCacheManager) -> None:
    big = make_seq("big", list(range(44)))
    assert not kv.admit(big, kv.lookup(big), 44)  # 11 blocks > 10
    assert big.block_table == [] and kv.num_free_blocks == 10
    assert kv.admit(big, kv.lookup(big), 36)
    big.num_computed_tokens = 36
    assert not kv.allocate(big, 5)
    assert len(big.block_table) == 9 and kv.num_free_blocks == 1
    assert kv.num_allocatable_tokens(big) == 4
    kv.free(big)


def test_second_sequence_hits_the_cached_prefix(kv: KVCacheManager) -> None:
    first = make_seq("a", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    admit_and_compute(kv, first)
    second = make_seq("b", [1, 2, 3, 4, 5, 6, 7, 8, 99, 98, 97])
    hit = kv.lookup(second)
    assert hit.num_tokens == 8
    assert hit.block_ids == tuple(first.block_table[:2])
    assert kv.admit(second, hit, second.num_tokens - 8)
    assert second.block_table[:2] == first.block_table[:2]
    assert second.block_table[2] != first.block_table[2]
    assert [kv.ref_count(b) for b in first.block_table] == [2, 2, 1]
    kv.free(first)
    assert [kv.ref_count(b) for b in second.block_table] == [1, 1, 1]
    kv.free(second)


def test_lookup_has_no_side_effects(kv: KVCacheManager) -> None:
    first = make_seq("a", list(range(9)))
    admit_and_compute(kv, first)
    kv.free(first)
    before = kv.stats
    assert kv.lookup(make_seq("b", list(range(9)))).num_tokens == 8
    assert kv.stats == before and kv.num_free_blocks == 10


@pytest.mark.parametrize(
    ("length", "expected_hit"),
    [(8, 4), (9, 8), (7, 4), (4, 0), (5, 4), (1, 0)],
)
def test_hit_stops_before_the_last_token(kv: KVCacheManager, length: int, expected_hit: int) -> None:
    """An identical sequence still computes at least its last token, from a block boundary."""
    first = make_seq("a", list(range(12)))
    admit_and_compute(kv, first)
    assert kv.lookup(make_seq("b", list(range(length)))).num_tokens == expected_hit
    kv.free(first)


def test_hash_chains_on_the_whole_prefix(kv: KVCacheManager) -> None:
    """A block with the same tokens after a different prefix is a different block."""
    first = make_seq("a", [1, 2, 3, 4, 5, 6, 7, 8, 0])
    admit_and_compute(kv, first)
    other = make_seq("b", [9, 9, 9, 9, 5, 6, 7, 8, 0])
    assert kv.lookup(other).num_tokens == 0
    assert hash_block(None, [5, 6, 7, 8]) != hash_block(hash_block(None, [1, 2, 3, 4]), [5, 6, 7, 8])
    kv.free(first)


def test_only_computed_full_blocks_are_cached(kv: KVCacheManager) -> None:
    seq = make_seq("a", list(range(11)))
    assert kv.admit(seq, kv.lookup(seq), 11)
    seq.num_computed_tokens = 7  # block 0 computed, block 1 half written
    kv.cache_computed_blocks(seq)
    assert kv.stats.num_cached_blocks == 1
    assert kv.lookup(make_seq("b", list(range(11)))).num_tokens == 4
    seq.num_computed_tokens = 11  # block 2 holds 3 of 4 tokens: never cached
    kv.cache_computed_blocks(seq)
    assert kv.stats.num_cached_blocks == 2
    kv.free(seq)


def test_freed_blocks_stay_cached_until_reallocated(kv: KVCacheManager) -> None:
    first = make_seq("a", list(range(9)))
    admit_and_compute(kv, first)
    cached = first.block_table[:2]
    kv.free(first)
    assert kv.num_free_blocks == 10 and kv.stats.num_cached_blocks == 2
    again = make_seq("b", list(range(9)))
    hit = kv.lookup(again)
    assert hit.block_ids == tuple(cached)
    assert kv.admit(again, hit, 1)
    assert again.block_table[:2] == cached and kv.num_free_blocks == 7
    kv.free(again)


def test_lru_eviction_takes_uncached_then_least_recently_freed(kv: KVCacheManager) -> None:
    old = make_seq("old", [1] * 8 + [0])
    new = make_seq("new", [2] * 8 + [0])
    admit_and_compute(kv, old)
    admit_and_compute(kv, new)
    kv.free(old)
    kv.free(new)
    assert kv.stats.num_cached_blocks == 4
    # 6 blocks hold no cached prefix: they go first.
    filler = make_seq("filler", list(range(100, 124)))
    assert kv.admit(filler, kv.lookup(filler), 24)
    assert kv.stats.num_cached_blocks == 4
    kv.free(filler)
    # Next, the least recently freed chain ("old"), tail block before head block.
    big = make_seq("big", list(range(200, 225)))
    assert kv.admit(big, kv.lookup(big), 25)  # 7 blocks: 6 uncached + old's tail
    assert kv.lookup(make_seq("x", [1] * 8 + [0])).num_tokens == 4
    assert kv.lookup(make_seq("y", [2] * 8 + [0])).num_tokens == 8
    big.num_computed_tokens = 25
    assert kv.allocate(big, 4)  # one more block: old's head
    assert kv.lookup(make_seq("x", [1] * 8 + [0])).num_tokens == 0
    assert kv.lookup(make_seq("y", [2] * 8 + [0])).num_tokens == 8
    kv.free(big)


def test_admit_counts_idle_hit_blocks_against_free_space(kv: KVCacheManager) -> None:
    """Taking a cached block nobody holds consumes a free block; admission must not overcommit."""
    first = make_seq("a", list(range(9)))
    admit_and_compute(kv, first)
    kv.free(first)
    holder = make_seq("holder", list(range(500, 528)))
    assert kv.admit(holder, kv.lookup(holder), 28)  # 7 blocks; 3 free, 2 of them cached
    second = make_seq("b", list(range(8)) + list(range(50, 58)))
    hit = kv.lookup(second)
    assert hit.num_tokens == 8
    assert not kv.admit(second, hit, 8)  # 2 hit + 2 new > 3
    assert second.block_table == [] and kv.num_free_blocks == 3
    assert kv.admit(second, hit, 4)  # 2 hit + 1 new
    assert kv.num_free_blocks == 0
    kv.free(second)
    kv.free(holder)


def test_identical_blocks_computed_twice_are_cached_once(kv: KVCacheManager) -> None:
    a = make_seq("a", list(range(9)))
    b = make_seq("b", list(range(9)))
    assert kv.admit(a, kv.lookup(a), 9)
    assert kv.admit(b, kv.lookup(b), 9)  # nothing cached yet: both compute
    for seq in (a, b):
        seq.num_computed_tokens = 9
        kv.cache_computed_blocks(seq)
    kv.check_invariants()
    assert kv.stats.num_cached_blocks == 2
    assert kv.lookup(make_seq("c", list(range(9)))).block_ids == tuple(a.block_table[:2])
    kv.free(a)
    kv.free(b)


def test_disabled_prefix_caching_never_hits() -> None:
    kv = KVCacheManager(num_blocks=10, block_size=BLOCK, enable_prefix_caching=False)
    first = make_seq("a", list(range(9)))
    admit_and_compute(kv, first)
    kv.free(first)
    assert kv.lookup(make_seq("b", list(range(9)))).num_tokens == 0
    assert kv.stats.num_cached_blocks == 0 and kv.stats.prefix_queried_tokens == 0
    assert kv.num_free_blocks == 10


def test_stats_count_queried_and_hit_tokens(kv: KVCacheManager) -> None:
    first = make_seq("a", list(range(9)))
    admit_and_compute(kv, first)
    second = make_seq("b", list(range(9)) + [77, 78, 79])
    admit_and_compute(kv, second)
    stats = kv.stats
    assert stats.prefix_queried_tokens == 9 + 12
    assert stats.prefix_hit_tokens == 8
    assert stats.prefix_hit_rate == pytest.approx(8 / 21)
    kv.free(first)
    kv.free(second)


def test_check_invariants_detects_corruption(kv: KVCacheManager) -> None:
    seq = make_seq("a", list(range(5)))
    assert kv.admit(seq, kv.lookup(seq), 5)
    kv.check_invariants(holders=[seq])
    with pytest.raises(RuntimeError):
        kv.check_invariants(holders=[])  # blocks held by nobody known
    kv._ref_counts[seq.block_table[0]] += 1  # simulate a lost decrement
    with pytest.raises(RuntimeError):
        kv.check_invariants(holders=[seq])
    kv._ref_counts[seq.block_table[0]] = 0  # and a block at 0 outside the free queue
    with pytest.raises(RuntimeError):
        kv.check_invariants()
    kv._ref_counts[seq.block_table[0]] = 1
    kv.free(seq)


def test_a_prefix_source_replaces_block_hits() -> None:
    asked: list[str] = []

    def source(seq: Sequence) -> int:
        asked.append(seq.request_id)
        return 50  # more than the prompt: capped so the last token is computed

    kv = KVCacheManager(num_blocks=10, block_size=BLOCK, enable_prefix_caching=False, prefix_source=source)
    seq = make_seq("a", list(range(9)))
    hit = kv.lookup(seq)
    assert asked == ["a"] and hit == PrefixHit((), 8) and kv.reuses_prefixes
    # Cached tokens still get blocks (block ids are accounting only for such an executor), unaligned is fine.
    assert kv.admit(seq, hit, 1) and len(seq.block_table) == 3
    assert kv.stats.prefix_queried_tokens == 9 and kv.stats.prefix_hit_tokens == 8
    kv.free(seq)
    kv.check_invariants()
    assert kv.num_free_blocks == 10 and kv.stats.num_cached_blocks == 0
    with pytest.raises(ValueError, match="prefix_source"):
        KVCacheManager(num_blocks=10, block_size=BLOCK, prefix_source=source)
