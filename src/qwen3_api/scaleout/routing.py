"""Prefix-aware, load-aware choice of a replica. Pure Python: Ray's request router calls it, tests call it directly.

Each replica is known by the block hashes of the prompts routed to it (an LRU set per replica, bounded), and by
its load: requests routed to it and not yet completed. A request goes to the replica holding the longest run of
its leading blocks, when they cover at least `min_match_ratio` of the prompt (as Ray Serve's prefix-affinity
router: a shared system prompt alone does not pull every conversation to one replica), unless that replica is
overloaded compared with the least-loaded one (both thresholds, as SGLang's router: more than `overload_slack`
requests above the minimum *and* more than `overload_ratio` times it). Then, and when nothing matches, the
least-loaded replica gets it. Ties are broken by rendezvous hashing of the request's own hashes, so identical
requests pick the same replica whatever order the replicas are listed in.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

BlockHash = bytes
Reason = Literal["prefix", "least_loaded", "overloaded", "random", "pinned"]


@dataclass(frozen=True)
class RouteKey:
    """What the router knows of one request: the chain hashes of its prompt's blocks, first to last (the last
    one may cover a partial block), or a replica it must go to."""

    block_hashes: tuple[BlockHash, ...] = ()
    pinned_replica: str | None = None


@dataclass(frozen=True)
class Decision:
    """The replicas in order of preference (the first is the choice), how many leading blocks the first holds,
    and why it was chosen."""

    ranking: tuple[str, ...]
    matched_blocks: int
    reason: Reason


@dataclass
class _Replica:
    blocks: OrderedDict[BlockHash, None] = field(default_factory=OrderedDict)
    in_flight: int = 0


class PrefixAwareRouter:
    """Chooses replicas for requests and learns which prompt blocks each replica has seen; thread-safe."""

    def __init__(
        self,
        overload_slack: int = 4,
        overload_ratio: float = 1.5,
        min_match_ratio: float = 0.1,
        max_blocks_per_replica: int = 100_000,
        policy: Literal["prefix", "random"] = "prefix",
        rng: random.Random | None = None,
    ) -> None:
        if overload_slack < 0 or overload_ratio < 1 or max_blocks_per_replica < 1 or not 0 <= min_match_ratio <= 1:
            raise ValueError(
                "overload_slack must be >= 0, overload_ratio >= 1, min_match_ratio in [0, 1], "
                "max_blocks_per_replica >= 1"
            )
        self.min_match_ratio = min_match_ratio
        self.overload_slack = overload_slack
        self.overload_ratio = overload_ratio
        self.max_blocks_per_replica = max_blocks_per_replica
        self.policy = policy
        self._rng = rng or random.Random()
        self._replicas: dict[str, _Replica] = {}
        self._request_replica: dict[str, str] = {}
        self._lock = threading.Lock()
        self.decisions: dict[tuple[str, Reason], int] = {}

    # ---- the replica set ----
    def set_replicas(self, replica_ids: Iterable[str]) -> None:
        """Replace the set of replicas; state of those still present is kept, that of the others dropped."""
        wanted = set(replica_ids)
        with self._lock:
            for replica_id in list(self._replicas):
                if replica_id not in wanted:
                    del self._replicas[replica_id]
            for replica_id in wanted:
                self._replicas.setdefault(replica_id, _Replica())

    def remove_replica(self, replica_id: str) -> None:
        """Forget a replica (its actor died: its cache is gone, and a restarted one starts empty)."""
        with self._lock:
            self._replicas.pop(replica_id, None)

    @property
    def replica_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._replicas)

    def load(self, replica_id: str) -> int:
        with self._lock:
            replica = self._replicas.get(replica_id)
            return replica.in_flight if replica else 0

    # ---- routing ----
    def choose(self, key: RouteKey, candidates: Sequence[str] | None = None) -> Decision:
        """Rank `candidates` (default: every known replica) for a request; raises ValueError when there are none."""
        with self._lock:
            names = [c for c in (candidates if candidates is not None else self._replicas) if c in self._replicas]
            if not names:
                raise ValueError("no replica to route to")
            if key.pinned_replica in names:
                return Decision((key.pinned_replica,), 0, "pinned")
            # A pinned replica that is gone: any replica answers (a request never waits for one that may not return)
            by_load = sorted(names, key=lambda name: (self._replicas[name].in_flight, _weight(key, name)))
            if self.policy == "random":
                first = self._rng.choice(names)
                return Decision((first, *[n for n in by_load if n != first]), self._matched(first, key), "random")
            min_load = self._replicas[by_load[0]].in_flight
            matches = {name: self._matched(name, key) for name in names}
            best = max(matches.values())
            if best == 0 or best < self.min_match_ratio * len(key.block_hashes):
                return Decision(tuple(by_load), 0, "least_loaded")
            holders = sorted((n for n in names if matches[n] == best), key=by_load.index)
            chosen = holders[0]
            load = self._replicas[chosen].in_flight
            if load > min_load + self.overload_slack and load > self.overload_ratio * min_load:
                return Decision(tuple(by_load), matches[by_load[0]], "overloaded")
            return Decision((chosen, *[n for n in by_load if n != chosen]), best, "prefix")

    def reserve(self, replica_id: str, request_id: str) -> None:
        """Count a request in `replica_id`'s load as it is ranked, before it is sent, so that requests arriving
        together see each other; a second reservation (a later routing round) moves it."""
        with self._lock:
            self._place(replica_id, request_id)

    def confirm(self, replica_id: str, key: RouteKey, request_id: str, reason: Reason) -> None:
        """A reserved request was sent to `replica_id`: count the decision, remember its blocks there, and move
        its reservation there if it was made elsewhere. One whose completion came first (Ray Serve can report a
        fast call done before routed) holds no reservation any more and adds no load."""
        with self._lock:
            replica = self._replicas.get(replica_id)
            if replica is None:
                return
            if reason != "pinned":  # probes and stored-response lookups are not routing decisions
                self.decisions[(replica_id, reason)] = self.decisions.get((replica_id, reason), 0) + 1
            if request_id in self._request_replica:
                self._place(replica_id, request_id)
            for block_hash in key.block_hashes:
                replica.blocks[block_hash] = None
                replica.blocks.move_to_end(block_hash)
            while len(replica.blocks) > self.max_blocks_per_replica:
                replica.blocks.popitem(last=False)

    def on_routed(self, replica_id: str, key: RouteKey, request_id: str, reason: Reason) -> None:
        """A request was sent to `replica_id` without a reservation first: reserve and confirm at once."""
        self.reserve(replica_id, request_id)
        self.confirm(replica_id, key, request_id, reason)

    def on_completed(self, request_id: str) -> None:
        """A request routed earlier has finished (answered, failed or cancelled)."""
        with self._lock:
            self._release(self._request_replica.pop(request_id, None))

    def _place(self, replica_id: str, request_id: str) -> None:
        """Count `request_id` in `replica_id`'s load, out of the replica it was counted in before (lock held)."""
        replica = self._replicas.get(replica_id)
        previous_id = self._request_replica.get(request_id)
        if replica is None or previous_id == replica_id:
            return
        self._release(previous_id)
        replica.in_flight += 1
        self._request_replica[request_id] = replica_id

    def _release(self, replica_id: str | None) -> None:
        """One request fewer in `replica_id`'s load, if it is still known (lock held)."""
        replica = self._replicas.get(replica_id or "")
        if replica is not None and replica.in_flight > 0:
            replica.in_flight -= 1

    def _matched(self, replica_id: str, key: RouteKey) -> int:
        blocks = self._replicas[replica_id].blocks
        count = 0
        for block_hash in key.block_hashes:
            if block_hash not in blocks:
                break
            count += 1
        return count


_ACTIVE: list[PrefixAwareRouter] = []
_ACTIVE_LOCK = threading.Lock()


def register_active(router: PrefixAwareRouter) -> None:
    """Make `router` the one `active_router` returns (Ray Serve makes the handle's request router in this process;
    the ingress reads its replica set and counters from here)."""
    with _ACTIVE_LOCK:
        _ACTIVE[:] = [router]


def active_router() -> PrefixAwareRouter | None:
    with _ACTIVE_LOCK:
        return _ACTIVE[0] if _ACTIVE else None


def _weight(key: RouteKey, replica_id: str) -> bytes:
    """Rendezvous-hash tie-break: the replica with the smallest digest of (request, replica) wins a tie."""
    last = key.block_hashes[-1] if key.block_hashes else b""
    return hashlib.sha256(last + replica_id.encode()).digest()
