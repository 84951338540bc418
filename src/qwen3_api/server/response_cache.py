"""Exact-match response cache with in-flight dedupe, for deterministic requests only.

What is stored is the engine's output, step by step (text deltas, token ids, logprobs, finish), not HTTP bytes:
every response, hit or not, is formatted afresh from it by the same code, so a streamed hit replays the same
deltas and a hit gets its own id and `created`. The key is computed from what the engine is given (the prompt
token ids after templating and the engine-side `SamplingParams`, every field of it, walked generically so a new
field can never be forgotten), the model's identity and the route.

Bounded by the bytes of stored entries (each kept as one pickled blob, so its size is known exactly), LRU, with
a TTL. Identical requests arriving while the first computes wait for it (single flight); if the first fails or
is abandoned, one of the waiters computes. Event-loop only: every method runs on the server's loop thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import hashlib
import json
import pickle
import time
from array import array
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from qwen3_api.engine.sampling import SamplingParams

KEY_VERSION = 1
# Charged per entry on top of its blob: the key, the index and the entry object.
ENTRY_OVERHEAD_BYTES = 256

CacheStatus = Literal["hit", "miss", "bypass"]


@dataclass(frozen=True)
class GenerationJob:
    """One prompt and how to sample it, `n` sequences (sibling i uses seed + i, as the engine does)."""

    prompt_token_ids: Sequence[int]
    params: SamplingParams
    n: int = 1


def is_deterministic(jobs: Sequence[GenerationJob]) -> bool:
    """True when the output is a pure function of the input: every job is greedy or explicitly seeded."""
    return all(job.params.greedy or job.params.seed is not None for job in jobs)


def _canonical(value: Any) -> Any:
    """A JSON-able form of `value` that differs whenever the value does. Unknown types are an error, so that a
    new kind of field gets a deliberate encoding instead of a silently shared key."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, enum.Enum):
        return [type(value).__qualname__, _canonical(value.value)]
    if isinstance(value, (tuple, list)):
        return [_canonical(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items())}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"__type__": type(value).__qualname__, **fields}
    raise TypeError(f"the response cache cannot key a {type(value).__name__}")


def response_cache_key(
    model_identity: str, route: str, jobs: Sequence[GenerationJob], shape: Mapping[str, Any] | None = None
) -> str:
    """The cache key of a request: model identity, route, response-shaping options and every job in full."""
    digest = hashlib.sha256()
    header = [KEY_VERSION, model_identity, route, _canonical(dict(shape or {}))]
    digest.update(json.dumps(header).encode())
    for job in jobs:
        meta = [len(job.prompt_token_ids), job.n, _canonical(job.params)]
        digest.update(json.dumps(meta, separators=(",", ":")).encode())
        digest.update(array("q", job.prompt_token_ids).tobytes())
    return digest.hexdigest()


def parse_cache_control(header: str | None) -> set[str]:
    """The directive names of a Cache-Control header, lower case (`no-cache`, `no-store`, ...)."""
    if not header:
        return set()
    return {part.split("=", 1)[0].strip().lower() for part in header.split(",") if part.strip()}


@dataclass
class _Entry:
    blob: bytes
    size: int
    stored_at: float


@dataclass(frozen=True)
class Lookup:
    """The answer to `ResponseCache.acquire`: a stored record (hit), leadership (miss: compute, then `finish`),
    or a flight to wait for."""

    status: Literal["hit", "miss", "wait"]
    record: Any = None
    flight: asyncio.Future[Any] | None = None


class ResponseCache:
    """LRU by stored bytes, with TTL and single-flight dedupe. `budget_bytes` 0 turns it off."""

    def __init__(self, budget_bytes: int, ttl_seconds: float, clock: Any = time.monotonic) -> None:
        self.budget_bytes = budget_bytes
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._by_age: OrderedDict[str, None] = OrderedDict()  # oldest first: the order entries expire in
        self._inflight: dict[str, asyncio.Future[Any]] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.bypasses = 0
        self.waiting = 0  # requests waiting for an identical one in flight

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0

    @property
    def num_entries(self) -> int:
        return len(self._entries)

    def count_bypass(self) -> None:
        self.bypasses += 1

    # ---- lookup and single flight ----------------------------------------------------------------------------
    def acquire(self, key: str) -> Lookup:
        """Hit, or leadership of a new flight (the caller must `finish` it), or an in-flight one to wait for."""
        record = self.get(key)
        if record is not None:
            self.hits += 1
            return Lookup("hit", record=record)
        flight = self._inflight.get(key)
        if flight is not None:
            return Lookup("wait", flight=flight)
        flight = asyncio.get_running_loop().create_future()
        self._inflight[key] = flight
        self.misses += 1
        return Lookup("miss", flight=flight)

    async def lookup(self, key: str) -> Lookup:
        """`acquire`, waiting out identical in-flight requests: a hit with their record, or leadership if the
        flight was abandoned (its leader failed or went away) and nobody else took over first."""
        while True:
            lookup = self.acquire(key)
            if lookup.status != "wait" or lookup.flight is None:
                return lookup
            # shield: a waiter that gives up (its client left) must not cancel the flight for the others
            self.waiting += 1
            try:
                record = await asyncio.shield(lookup.flight)
            finally:
                self.waiting -= 1
            if record is not None:
                self.hits += 1
                return Lookup("hit", record=record)

    def finish(self, key: str, flight: asyncio.Future[Any] | None, record: Any | None, store: bool = True) -> None:
        """End a flight (or a computation that was no flight, `flight` None): `record` None abandons it and wakes
        the waiters to retry; a record is stored when `store` and handed to every waiter."""
        if record is not None and store:
            self.put(key, record)
        if flight is not None:
            if self._inflight.get(key) is flight:
                del self._inflight[key]
            if not flight.done():
                flight.set_result(record)

    # ---- storage ---------------------------------------------------------------------------------------------
    def get(self, key: str) -> Any | None:
        """The stored record (a fresh copy), refreshing its LRU position; None when absent or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() - entry.stored_at > self.ttl_seconds:
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return pickle.loads(entry.blob)

    def put(self, key: str, record: Any) -> bool:
        """Store `record` under `key`, evicting least recently used entries to stay within the budget; False
        when it cannot fit at all."""
        if not self.enabled:
            return False
        blob = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
        size = len(blob) + len(key) + ENTRY_OVERHEAD_BYTES
        if key in self._entries:
            self._remove(key)
        if size > self.budget_bytes:
            return False
        self._drop_expired()
        while self.bytes + size > self.budget_bytes:
            self._remove(next(iter(self._entries)))
        self._entries[key] = _Entry(blob, size, self._clock())
        self._by_age[key] = None
        self.bytes += size
        return True

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key)
        del self._by_age[key]
        self.bytes -= entry.size

    def _drop_expired(self) -> None:
        now = self._clock()
        while self._by_age:
            oldest = next(iter(self._by_age))
            if now - self._entries[oldest].stored_at <= self.ttl_seconds:
                return
            self._remove(oldest)
