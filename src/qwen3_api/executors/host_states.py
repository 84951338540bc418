"""Finished conversations' llama.cpp states in host memory: where a sequence id's cells go when the slot is needed
for another request, so that the conversation's next turn restores them (a memory copy) instead of recomputing its
whole history (a prefill).

Pure Python: the slot pool decides what to keep and what to restore, the llama.cpp runner copies the bytes
(`llamacpp_state.save_sequence` / `restore_sequence`). Entries are least recently used first and evicted in that
order past `max_bytes`; an entry whose tokens start another's is dropped when the longer one comes (the next turn
of a chat supersedes the previous one).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import count

import numpy as np


@dataclass(eq=False)
class HostEntry:
    """One saved sequence: the tokens whose K/V `state` holds at positions 0..n-1, and that state's size."""

    tokens: np.ndarray  # int64 [n]
    state: object  # what llama.cpp wrote for the sequence (opaque here)
    num_bytes: int
    key: int = field(default_factory=count().__next__)

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)


def common_prefix_length(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> int:
    """Length of the longest common prefix of two token sequences (lists or int arrays)."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    mismatch = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(mismatch[0]) if mismatch.size else n


class HostStateCache:
    """An LRU of saved sequences within `max_bytes`; see the module docstring."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, HostEntry] = OrderedDict()  # least recently used first
        self.num_bytes = 0
        self.num_saved = 0  # sequences ever saved
        self.num_restored = 0  # restores handed to a request
        self.num_evicted = 0  # entries dropped for room (superseded ones not counted)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, entry: object) -> bool:
        return isinstance(entry, HostEntry) and self._entries.get(entry.key) is entry

    def stats(self) -> dict[str, float]:
        """Size and counts, named as the engine's metrics name them."""
        return {"host_cache_bytes": float(self.num_bytes), "host_cache_entries": float(len(self)),
                "host_cache_saved": float(self.num_saved), "host_cache_restored": float(self.num_restored),
                "host_cache_evicted": float(self.num_evicted)}  # fmt: skip

    def entries(self) -> list[HostEntry]:
        """Every entry, most recently used first."""
        return list(reversed(self._entries.values()))

    def best_match(self, token_ids: list[int], limit: int) -> tuple[HostEntry | None, int]:
        """The entry sharing the longest prefix with `token_ids` (at most `limit` tokens of it) and that length."""
        tokens = np.asarray(token_ids, dtype=np.int64)
        best: tuple[HostEntry | None, int] = (None, 0)
        for entry in self.entries():
            num = min(common_prefix_length(entry.tokens, tokens), limit)
            if num > best[1]:
                best = (entry, num)
        return best

    def holds(self, token_ids: list[int]) -> bool:
        """True when an entry already holds all of `token_ids` (saving them again would only copy); that entry
        then counts as just used, as the conversation is live again."""
        tokens = np.asarray(token_ids, dtype=np.int64)
        for entry in self._entries.values():
            if entry.num_tokens >= len(tokens) and common_prefix_length(entry.tokens, tokens) == len(tokens):
                self._entries.move_to_end(entry.key)
                return True
        return False

    def put(self, token_ids: list[int], state: object, num_bytes: int) -> HostEntry | None:
        """Keep `state` for `token_ids` as the most recently used entry, evicting the least recently used ones
        past `max_bytes`; None (nothing kept) when it alone is larger than that."""
        if not 0 < num_bytes <= self.max_bytes:
            return None
        entry = HostEntry(np.asarray(token_ids, dtype=np.int64), state, num_bytes)
        for old in list(self._entries.values()):
            if old.num_tokens <= entry.num_tokens and common_prefix_length(old.tokens, entry.tokens) == old.num_tokens:
                self._drop(old)
        while self.num_bytes + num_bytes > self.max_bytes:
            self._drop(next(iter(self._entries.values())))
            self.num_evicted += 1
        self._entries[entry.key] = entry
        self.num_bytes += num_bytes
        self.num_saved += 1
        return entry

    def touch(self, entry: HostEntry) -> None:
        """Mark `entry` as just used (a request restores it)."""
        if entry.key in self._entries:
            self._entries.move_to_end(entry.key)
        self.num_restored += 1

    def discard(self, entry: HostEntry) -> None:
        """Forget `entry` (llama.cpp refused its state)."""
        if entry.key in self._entries:
            self._drop(entry)

    def _drop(self, entry: HostEntry) -> None:
        del self._entries[entry.key]
        self.num_bytes -= entry.num_bytes
