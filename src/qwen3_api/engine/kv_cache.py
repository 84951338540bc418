"""Paged KV-cache block allocator with automatic prefix caching. Pure Python: it hands out block ids only.

A sequence's K/V live in fixed-size blocks listed in `seq.block_table`. A full block whose K/V are computed is
registered under a chain hash of (parent block's hash, its token ids), so the hash names the whole prefix up to
and including that block. A later sequence starting with the same tokens reuses those blocks (ref count + 1)
instead of recomputing them. A block whose ref count drops to 0 keeps its hash and waits in an LRU free queue;
its cached content is dropped only when the block is handed out again.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from qwen3_api.engine.sequence import Sequence

BlockHash = bytes


def hash_block(parent: BlockHash | None, token_ids: list[int]) -> BlockHash:
    """Chain hash of one full block: its tokens and, through `parent`, every token before it.

    sha256 rather than Python's `hash` so that equal prefixes never collide by accident and hashes are stable
    across processes.
    """
    digest = hashlib.sha256(parent or b"")
    digest.update(array("q", token_ids).tobytes())
    return digest.digest()


@dataclass(frozen=True)
class PrefixHit:
    """Cached full blocks matching the start of a sequence, as found by `KVCacheManager.lookup`."""

    block_ids: tuple[int, ...]
    num_tokens: int  # tokens whose K/V need no computing: len(block_ids) * block_size, or from a prefix source


@dataclass(frozen=True)
class KVCacheStats:
    """A snapshot of block usage and prefix-cache effectiveness."""

    num_blocks: int
    num_free_blocks: int  # includes cached blocks no sequence holds: they are reused on demand
    num_cached_blocks: int
    prefix_queried_tokens: int
    prefix_hit_tokens: int

    @property
    def usage(self) -> float:
        """Fraction of blocks held by sequences."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    @property
    def prefix_hit_rate(self) -> float:
        """Fraction of looked-up tokens served from the prefix cache (0 before any lookup)."""
        return self.prefix_hit_tokens / self.prefix_queried_tokens if self.prefix_queried_tokens else 0.0


class KVCacheManager:
    """Allocates KV blocks to sequences with ref counts, and reuses computed full blocks across sequences.

    The scheduler calls `lookup` + `admit` when a sequence enters the running set, `allocate` before each later
    chunk, `cache_computed_blocks` once a chunk's K/V are written, and `free` on finish or preemption.
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_prefix_caching: bool = True,
        prefix_source: Callable[[Sequence], int] | None = None,
    ) -> None:
        """`prefix_source`, instead of prefix caching by blocks: a function telling how many leading tokens of a
        new sequence an executor that keeps its own cache (llama.cpp) already holds. Those tokens get blocks
        like any others (blocks are only accounting there) and are not computed."""
        if enable_prefix_caching and prefix_source is not None:
            raise ValueError("prefix_source replaces block prefix caching: pass enable_prefix_caching=False")
        for name, value in (("num_blocks", num_blocks), ("block_size", block_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.prefix_source = prefix_source
        self._ref_counts = [0] * num_blocks
        self._block_hashes: list[BlockHash | None] = [None] * num_blocks
        # Blocks with ref count 0, least recently freed first: allocation takes from the front.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._cached: dict[BlockHash, int] = {}
        self._parents: dict[BlockHash, BlockHash | None] = {}  # each cached block's predecessor in its chain
        self.num_registrations = 0  # blocks ever registered in the cache: tells a snapshot whether it is stale
        # Per live sequence: chain hashes of its full blocks (computed once, tokens never change), and how many
        # of its leading blocks have already been offered to the cache.
        self._seq_hashes: dict[str, list[BlockHash]] = {}
        self._seq_num_registered: dict[str, int] = {}
        self._queried_tokens = 0
        self._hit_tokens = 0

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def stats(self) -> KVCacheStats:
        return KVCacheStats(
            num_blocks=self.num_blocks,
            num_free_blocks=len(self._free),
            num_cached_blocks=len(self._cached),
            prefix_queried_tokens=self._queried_tokens,
            prefix_hit_tokens=self._hit_tokens,
        )

    @property
    def reuses_prefixes(self) -> bool:
        """True when a new sequence may start past cached tokens (by blocks or from the prefix source)."""
        return self.enable_prefix_caching or self.prefix_source is not None

    def blocks_needed(self, num_tokens: int) -> int:
        """Blocks that hold `num_tokens` tokens."""
        return -(-num_tokens // self.block_size)

    def ref_count(self, block_id: int) -> int:
        """How many sequences hold `block_id`."""
        return self._ref_counts[block_id]

    def lookup(self, seq: Sequence) -> PrefixHit:
        """The longest chain of cached blocks matching `seq`'s tokens; changes no ref count or statistic.

        The hit stops at the last block boundary strictly before the last token, so at least that token is
        computed and the model produces logits to sample from.
        """
        if self.prefix_source is not None:
            return PrefixHit((), max(0, min(self.prefix_source(seq), seq.num_tokens - 1)))
        if not self.enable_prefix_caching:
            return PrefixHit((), 0)
        max_blocks = (seq.num_tokens - 1) // self.block_size
        block_ids: list[int] = []
        for block_hash in self._full_block_hashes(seq, max_blocks)[:max_blocks]:
            block_id = self._cached.get(block_hash)
            if block_id is None:
                break
            block_ids.append(block_id)
        return PrefixHit(tuple(block_ids), len(block_ids) * self.block_size)

    def admit(self, seq: Sequence, hit: PrefixHit, num_new_tokens: int) -> bool:
        """Give a sequence holding no blocks the blocks of `hit` plus new ones for its first `num_new_tokens`.

        Returns False, changing nothing, when too few blocks are free. The caller sets
        `seq.num_computed_tokens = hit.num_tokens`.
        """
        if seq.block_table:
            raise ValueError(f"request {seq.request_id} already holds blocks; admit() is for new sequences")
        num_new_blocks = self.blocks_needed(hit.num_tokens + num_new_tokens) - len(hit.block_ids)
        # Hit blocks nobody holds sit in the free queue: taking them leaves fewer to allocate from.
        num_hit_idle = sum(1 for block_id in hit.block_ids if self._ref_counts[block_id] == 0)
        if num_new_blocks > len(self._free) - num_hit_idle:
            return False
        for block_id in hit.block_ids:
            if self._ref_counts[block_id] == 0:
                del self._free[block_id]
            self._ref_counts[block_id] += 1
        seq.block_table = list(hit.block_ids) + [self._pop_free_block() for _ in range(num_new_blocks)]
        self._seq_num_registered[seq.request_id] = len(hit.block_ids)
        if self.reuses_prefixes and seq.num_preemptions == 0:
            # Only a first admission's prompt counts: a preempted sequence finding its own blocks again, or
            # output tokens found in the cache, are recomputation saved, not prefix hits.
            self._queried_tokens += seq.num_prompt_tokens
            self._hit_tokens += min(hit.num_tokens, seq.num_prompt_tokens)
        return True

    def num_allocatable_tokens(self, seq: Sequence) -> int:
        """How many tokens past `seq.num_computed_tokens` could get blocks right now."""
        capacity = (len(seq.block_table) + len(self._free)) * self.block_size
        return max(0, capacity - seq.num_computed_tokens)

    def allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Make `seq.block_table` cover its next `num_new_tokens` tokens; False, changing nothing, if it can't."""
        num_new_blocks = self.blocks_needed(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        if num_new_blocks > len(self._free):
            return False
        seq.block_table.extend(self._pop_free_block() for _ in range(num_new_blocks))
        return True

    def cache_computed_blocks(self, seq: Sequence) -> None:
        """Register `seq`'s full blocks below `num_computed_tokens` in the prefix cache.

        Only computed blocks are registered: a block whose K/V are not yet written must never be shared. When
        an identical block is already cached (two equal prompts prefilled side by side), this copy stays
        private and goes back unhashed when freed.
        """
        if not self.enable_prefix_caching:
            return
        num_full = seq.num_computed_tokens // self.block_size
        start = self._seq_num_registered.get(seq.request_id, 0)
        if num_full <= start:
            return
        hashes = self._full_block_hashes(seq, num_full)
        for index in range(start, num_full):
            block_id, block_hash = seq.block_table[index], hashes[index]
            if self._block_hashes[block_id] is None and block_hash not in self._cached:
                self._cached[block_hash] = block_id
                self._block_hashes[block_id] = block_hash
                self._parents[block_hash] = hashes[index - 1] if index else None
                self.num_registrations += 1
        self._seq_num_registered[seq.request_id] = num_full

    def free(self, seq: Sequence) -> None:
        """Release `seq`'s blocks (on finish, abort or preemption); cached ones stay reusable until evicted."""
        # Tail first, so that within a chain the last blocks are evicted first: a chain's head is the part
        # other requests are likeliest to share, and without it the tail cannot be hit anyway.
        for block_id in reversed(seq.block_table):
            self._ref_counts[block_id] -= 1
            if self._ref_counts[block_id] == 0:
                self._free[block_id] = None
                if self._block_hashes[block_id] is None:
                    # Nothing to reuse in it: hand it out before any block that still caches a prefix.
                    self._free.move_to_end(block_id, last=False)
        seq.block_table = []
        self._seq_hashes.pop(seq.request_id, None)
        self._seq_num_registered.pop(seq.request_id, None)

    def check_invariants(self, holders: Iterable[Sequence] | None = None) -> None:
        """Raise RuntimeError if the block accounting is inconsistent (for tests and debugging).

        With `holders`, every sequence holding blocks, each ref count must also equal the number of holders'
        block tables that list the block.
        """
        if holders is not None:
            expected = [0] * self.num_blocks
            for seq in holders:
                for block_id in seq.block_table:
                    expected[block_id] += 1
            if expected != self._ref_counts:
                wrong = [b for b in range(self.num_blocks) if expected[b] != self._ref_counts[b]]
                raise RuntimeError(f"ref counts disagree with the holders' block tables for blocks {wrong}")
        for block_id, count in enumerate(self._ref_counts):
            if count < 0:
                raise RuntimeError(f"block {block_id} has negative ref count {count}")
            if (count == 0) != (block_id in self._free):
                raise RuntimeError(
                    f"block {block_id} has ref count {count} but free-queue membership disagrees"
                )
        for block_hash, block_id in self._cached.items():
            if self._block_hashes[block_id] != block_hash:
                raise RuntimeError(f"cache entry for block {block_id} does not match the block's hash")
        if self._parents.keys() != self._cached.keys():
            raise RuntimeError("the parent links and the cache index disagree")
        num_hashed = sum(1 for block_hash in self._block_hashes if block_hash is not None)
        if num_hashed != len(self._cached):
            raise RuntimeError(f"{num_hashed} blocks carry a hash but the cache indexes {len(self._cached)}")

    def _full_block_hashes(self, seq: Sequence, num_blocks: int) -> list[BlockHash]:
        """Chain hashes of `seq`'s first `num_blocks` full blocks, extending the memo as tokens are added."""
        hashes = self._seq_hashes.setdefault(seq.request_id, [])
        if len(hashes) < num_blocks:
            tokens = seq.all_token_ids
            size = self.block_size
            for index in range(len(hashes), num_blocks):
                parent = hashes[-1] if hashes else None
                hashes.append(hash_block(parent, tokens[index * size : (index + 1) * size]))
        return hashes

    def _pop_free_block(self) -> int:
        """Take the least recently freed block, evicting whatever prefix it still cached."""
        block_id, _ = self._free.popitem(last=False)
        block_hash = self._block_hashes[block_id]
        if block_hash is not None:
            del self._cached[block_hash]
            del self._parents[block_hash]
            self._block_hashes[block_id] = None
        self._ref_counts[block_id] = 1
        return block_id

    # ---- persistence (prefix_store) -------------------------------------------------------------------------
    def hottest_cached_blocks(self, max_blocks: int) -> list[tuple[BlockHash, BlockHash | None, int]]:
        """Up to `max_blocks` cached blocks as (hash, parent hash, block id), hottest first, parents before
        children and every parent included: blocks sequences hold, then idle ones most recently freed first."""
        held = [b for b, h in enumerate(self._block_hashes) if h is not None and self._ref_counts[b] > 0]
        candidates = held + [b for b in reversed(self._free) if self._block_hashes[b] is not None]
        chosen: dict[BlockHash, int] = {}
        for block_id in candidates:
            chain: list[BlockHash] = []
            block_hash = self._block_hashes[block_id]
            while block_hash is not None and block_hash not in chosen:
                if block_hash not in self._cached:  # a predecessor was evicted: the chain cannot be hit
                    chain = []
                    break
                chain.append(block_hash)
                block_hash = self._parents[block_hash]
            if chain and len(chosen) + len(chain) <= max_blocks:
                for link in reversed(chain):
                    chosen[link] = self._cached[link]
        return [(h, self._parents[h], b) for h, b in chosen.items()]

    def import_cached_blocks(self, blocks: list[tuple[BlockHash, BlockHash | None]]) -> list[int | None]:
        """Register blocks whose K/V the caller writes: (hash, parent) in parent-first order; returns each one's
        block id (None when it is already cached or no block is idle). Imported blocks stay idle and evictable,
        chain heads last."""
        if not self.enable_prefix_caching:
            return [None] * len(blocks)
        assigned: list[int | None] = []
        for block_hash, parent in blocks:
            if block_hash in self._cached or not self._free:
                assigned.append(None)
                continue
            block_id = self._pop_free_block()
            self._ref_counts[block_id] = 0
            self._cached[block_hash] = block_id
            self._block_hashes[block_id] = block_hash
            self._parents[block_hash] = parent
            assigned.append(block_id)
        for maybe_block in reversed(assigned):  # children first into the queue: they are evicted before parents
            if maybe_block is not None:
                self._free[maybe_block] = None
        return assigned
