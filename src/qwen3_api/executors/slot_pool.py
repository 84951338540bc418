"""Which llama.cpp sequence ("slot") each request uses, and prefix reuse between slots. Pure Python: it plans,
the llama.cpp runner carries the plan out.

llama.cpp's KV cells belong to one sequence each (non-unified cache), so a cached prefix cannot be shared the way
our paged blocks are; it can be *kept* and *copied*:

- a finished request's slot keeps its cells and tokens ("retained", least recently used first) until a new
  request needs the slot;
- a new request whose prompt starts with a retained slot's tokens takes that slot over: the cells past the
  common prefix are dropped and only the rest of the prompt is computed (the multi-turn chat case; no copy). While
  an empty slot exists, a takeover must cover at least half of what the slot holds, so that a new chat sharing
  only a system prompt does not wipe a long cached conversation (it copies, or computes, into the empty slot);
- when the best source is still running, or another new request takes the retained slot over, the others get a
  copy of its cells. llama.cpp copies a whole sequence — every cell of its context, ~0.1 MB per cell for the
  0.6b shape, so ~270 MB for 2,340 cells — which on a CPU is still far cheaper than prefilling 64 tokens (a
  quarter of a second for that shape), hence the `min_copy_tokens` floor.

With per-sequence KV, llama.cpp computes only runs of consecutive sequence ids in one physical batch (each stream
is a slice of its K/V tensors), and every extra physical batch reads all the weights again: a `compact` pool gives
a new request the free slot that leaves the fewest runs of live ids: one filling a hole first (even if it holds a
kept conversation: a hole costs every step), then one extending a run, into a hole before past the ends; among
equals empty before retained, least recently used first.

With a host-memory cache (`host_states`), a retained slot's cells are saved there before they are dropped (the
slot is needed for another request, or a takeover cuts them), and a new request whose prompt starts with a saved
sequence gets a free slot with that state restored (copied back) instead of recomputing it: more conversations
than sequence ids keep their history at the cost of a memory copy, and no decode step pays for them. A restore
writes its cells at once while a copy reads its source at the next decode, so restores take slots no copy of the
same step reads while there are any (`llamacpp_slot_ops` computes one that could not).

The scheduler learns a hit through `lookup` (wired as the KV cache manager's prefix source), which records a
promise; `assign` then honours it in the same step. Promises live for one step.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Literal

from qwen3_api.executors.host_states import HostEntry, HostStateCache, common_prefix_length


@dataclass
class Slot:
    """One llama.cpp sequence id and the tokens whose K/V its cells hold, by position."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)

    @property
    def num_cached(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class SlotOp:
    """One llama.cpp memory operation, in plan order.

    "trim": drop the cells of `seq_id` from position `num_tokens` on (0 clears it).
    "copy": make `seq_id` hold the first `num_tokens` positions of `src_seq_id` (copy, then trim).
    "save": put the state of `seq_id`, which holds `tokens`, into the host cache (a trim follows).
    "restore": make the empty `seq_id` hold the first `num_tokens` positions of the host cache's `entry`.
    """

    kind: Literal["trim", "copy", "save", "restore"]
    seq_id: int
    num_tokens: int
    src_seq_id: int = -1
    tokens: tuple[int, ...] = ()
    entry: HostEntry | None = None


@dataclass(frozen=True)
class _Promise:
    source: Slot
    num_tokens: int
    takeover: bool  # decided at lookup: at most one takeover promise per source, the others copy


class SlotPool:
    """Slots of live requests, retained slots (prefix cache) and free ones; see the module docstring."""

    def __init__(self, num_slots: int, *, reuse_prefixes: bool, min_reuse_tokens: int = 16,
                 min_copy_tokens: int = 64, compact: bool = False, host: HostStateCache | None = None,
                 ) -> None:  # fmt: skip
        if num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {num_slots}")
        if min_reuse_tokens < 1 or min_copy_tokens < min_reuse_tokens:
            raise ValueError("need 1 <= min_reuse_tokens <= min_copy_tokens")
        self.num_slots = num_slots
        self.reuse_prefixes = reuse_prefixes
        self.min_reuse_tokens = min_reuse_tokens
        self.min_copy_tokens = min_copy_tokens
        self.compact = compact
        self.host = host if reuse_prefixes else None
        self._live: dict[str, Slot] = {}
        self._retained: OrderedDict[int, Slot] = OrderedDict()  # by seq id, least recently released first
        self._empty = list(range(num_slots - 1, -1, -1))  # pop() hands out 0 first
        self._promises: dict[str, _Promise] = {}
        self._restores: dict[str, tuple[HostEntry, int]] = {}  # promises of a host cache entry
        self.num_retentions = 0  # slots ever retained: tells a prefix cache snapshot whether it is stale

    # -- queries --------------------------------------------------------------------------------------------

    @property
    def num_free(self) -> int:
        """Slots a new request can take: empty ones and retained ones (their cache is dropped then)."""
        return len(self._empty) + len(self._retained)

    @property
    def num_retained(self) -> int:
        return len(self._retained)

    def slot_of(self, request_id: str) -> Slot | None:
        return self._live.get(request_id)

    def hottest_retained(self) -> list[Slot]:
        """Retained slots, most recently released first."""
        return list(reversed(self._retained.values()))

    # -- prefix lookup (schedule time) ---------------------------------------------------------------------

    def lookup(self, request_id: str, token_ids: list[int]) -> int:
        """Tokens of `token_ids` (a new request's prompt) whose K/V a slot already holds, at most all but the
        last; records a promise that `assign` honours in this step. 0 when nothing worth reusing is cached."""
        self._promises.pop(request_id, None)
        self._restores.pop(request_id, None)
        if not self.reuse_prefixes or len(token_ids) < 2:
            return 0
        limit = len(token_ids) - 1
        promised = {id(p.source) for p in self._promises.values()}
        best: tuple[int, bool] = (0, False)  # (tokens, takes a retained slot over); larger is better
        best_slot: Slot | None = None
        for slot, retained in [(s, False) for s in self._live.values()] + [(s, True) for s in self._retained.values()]:
            num = min(common_prefix_length(slot.tokens, token_ids), limit)
            # Taking over drops the slot's cells past `num`: fine when it has no empty slot to spare, or when
            # the new prompt keeps most of them.
            covers = not self._empty or 2 * num >= slot.num_cached
            takeover = retained and id(slot) not in promised and covers
            if num < (self.min_reuse_tokens if takeover else self.min_copy_tokens):
                continue
            if (num, takeover) > best:
                best, best_slot = (num, takeover), slot
        if self.host is not None:
            entry, num = self.host.best_match(token_ids, limit)  # a slot's cells win a tie: no copy back
            if entry is not None and num >= self.min_reuse_tokens and num > best[0]:
                self._restores[request_id] = (entry, num)
                return num
        if best_slot is None:
            return 0
        self._promises[request_id] = _Promise(best_slot, best[0], best[1])
        return best[0]

    # -- slot assignment (forward time) --------------------------------------------------------------------

    def assign(self, new_request_ids: list[str]) -> list[SlotOp]:
        """Give each new request a slot (its `num_cached` = the promised hit, else 0); returns the llama.cpp
        operations to run, in order, before the batch is decoded. Clears every promise."""
        wanted = set(new_request_ids)
        promises = {r: p for r, p in self._promises.items() if r in wanted}
        restores = {r: hit for r, hit in self._restores.items() if r in wanted}
        self._promises.clear()
        self._restores.clear()
        ops: list[SlotOp] = []

        def retained(promise: _Promise) -> bool:
            return self._retained.get(promise.source.seq_id) is promise.source

        takers = {r for r, p in promises.items() if p.takeover and retained(p)}
        taken = {promises[r].source.seq_id for r in takers}
        # Retained sources with promises still to honour are never evicted; copies run first, since taking a
        # slot over trims the cells they copy from (ops run in order; llama.cpp reads a copy's cells as they are
        # when it is queued).
        readers = Counter(p.source.seq_id for p in promises.values() if retained(p))
        for request_id, promise in promises.items():
            if request_id in takers:
                continue
            source = promise.source.seq_id
            slot = self._take_free({seq_id for seq_id, n in readers.items() if n > 0}, ops)
            if slot is None:
                # Only sources still to be read are left, so this request is its retained source's last
                # reader (the scheduler never admits more requests than free slots): it takes the source over.
                if not (retained(promise) and readers[source] == 1 and source not in taken):
                    raise RuntimeError(f"all {self.num_slots} llama.cpp sequences are taken")
                self._take_over(request_id, promise, ops)
            else:
                ops.append(SlotOp("copy", slot.seq_id, promise.num_tokens, source))
                slot.tokens = promise.source.tokens[: promise.num_tokens]
                self._live[request_id] = slot
            readers[source] -= 1
        for request_id in takers:
            self._take_over(request_id, promises[request_id], ops)
        # A restore writes its cells at once, a copy reads its source at the next decode: restores go elsewhere
        # while they can (else the runner computes them instead, `llamacpp_slot_ops`).
        copied = {op.src_seq_id for op in ops if op.kind == "copy"}
        for request_id in new_request_ids:
            if request_id not in self._live:
                slot = (self._take_free(copied, ops) if request_id in restores else None) or self._take_free(set(), ops)
                if slot is None:
                    raise RuntimeError(f"all {self.num_slots} llama.cpp sequences are taken")
                if request_id in restores:
                    entry, num = restores[request_id]
                    ops.append(SlotOp("restore", slot.seq_id, num, entry=entry))
                    slot.tokens = entry.tokens[:num].tolist()
                self._live[request_id] = slot
        return ops

    def _take_over(self, request_id: str, promise: _Promise, ops: list[SlotOp]) -> None:
        slot = self._retained.pop(promise.source.seq_id)
        self._clear(slot, promise.num_tokens, ops)
        del slot.tokens[promise.num_tokens :]
        self._live[request_id] = slot

    def _clear(self, slot: Slot, keep: int, ops: list[SlotOp]) -> None:
        """Drop a retained slot's cells from position `keep` on; saved to the host cache first when that drops at
        least `min_reuse_tokens` it does not hold yet."""
        host = self.host
        if host is not None and slot.num_cached - keep >= self.min_reuse_tokens and not host.holds(slot.tokens):
            ops.append(SlotOp("save", slot.seq_id, slot.num_cached, tokens=tuple(slot.tokens)))
        ops.append(SlotOp("trim", slot.seq_id, keep))

    def _take_free(self, busy: set[int], ops: list[SlotOp]) -> Slot | None:
        """An empty slot, else the least recently retained one not in `busy` (its cells cleared); None if none.
        A compact pool first looks at where the slot would sit among the live ones (module docstring)."""
        if self.compact:
            return self._take_compact(busy, ops)
        if self._empty:
            return Slot(self._empty.pop())
        for seq_id in self._retained:
            if seq_id not in busy:
                self._clear(self._retained.pop(seq_id), 0, ops)
                return Slot(seq_id)
        return None

    def _take_compact(self, busy: set[int], ops: list[SlotOp]) -> Slot | None:
        live = {slot.seq_id for slot in self._live.values()}
        empty = set(self._empty)
        age = {seq_id: rank for rank, seq_id in enumerate(self._retained)}  # 0: least recently released
        candidates = [*empty, *(seq_id for seq_id in self._retained if seq_id not in busy)]
        if not candidates:
            return None

        low, high = (min(live), max(live)) if live else (-1, self.num_slots)

        def cost(seq_id: int) -> tuple[int, bool, bool, int, int]:
            new_runs = 1 - (seq_id - 1 in live) - (seq_id + 1 in live)  # -1 fills a hole, 0 extends a run
            outside = not low < seq_id < high  # inside, it narrows a hole the next request can close
            return new_runs, outside, seq_id not in empty, age.get(seq_id, 0), seq_id

        seq_id = min(candidates, key=cost)
        if seq_id in empty:
            self._empty.remove(seq_id)
        else:
            self._clear(self._retained.pop(seq_id), 0, ops)
        return Slot(seq_id)

    # -- bookkeeping ---------------------------------------------------------------------------------------

    def record(self, request_id: str, start_position: int, token_ids: list[int]) -> None:
        """Note that `token_ids` were decoded into the request's slot from `start_position` on."""
        slot = self._live[request_id]
        del slot.tokens[start_position:]
        slot.tokens.extend(token_ids)

    def truncate(self, request_id: str, position: int) -> SlotOp:
        """Forget the request's tokens from `position` on; returns the trim that drops their cells."""
        slot = self._live[request_id]
        del slot.tokens[position:]
        return SlotOp("trim", slot.seq_id, position)

    def evict_retained(self, max_cells: int) -> list[SlotOp]:
        """Clear retained slots, least recently released first, until live and retained slots hold at most
        `max_cells` tokens (a unified cache: every slot's cells come from one pool); returns the operations to run."""
        used = sum(slot.num_cached for slot in self._live.values()) + sum(
            slot.num_cached for slot in self._retained.values()
        )
        ops: list[SlotOp] = []
        while used > max_cells and self._retained:
            seq_id, slot = self._retained.popitem(last=False)
            used -= slot.num_cached
            self._empty.append(seq_id)
            self._clear(slot, 0, ops)
        return ops

    def release(self, request_id: str) -> SlotOp | None:
        """Free a finished, aborted or preempted request's slot: retained for reuse when prefix reuse is on and it
        holds anything, else cleared (the returned operation)."""
        self._promises.pop(request_id, None)
        self._restores.pop(request_id, None)
        slot = self._live.pop(request_id, None)
        if slot is None:
            return None
        if self.reuse_prefixes and slot.tokens:
            self._retained[slot.seq_id] = slot
            self.num_retentions += 1
            return None
        self._empty.append(slot.seq_id)
        return SlotOp("trim", slot.seq_id, 0)

    # -- restoring retained slots (a prefix cache read back from disk) ---------------------------------------

    def take_empty(self) -> int | None:
        """An empty slot's sequence id for restoring a retained sequence into; None if none is empty."""
        return self._empty.pop() if self._empty else None

    def put_back_empty(self, seq_id: int) -> None:
        """Return a slot `take_empty` gave whose restore failed (its cells cleared)."""
        self._empty.append(seq_id)

    def adopt_retained(self, seq_id: int, tokens: list[int]) -> None:
        """Register a restored sequence as retained, as the least recently released one: restored hottest
        first, each later one is colder."""
        self._retained[seq_id] = Slot(seq_id, list(tokens))
        self._retained.move_to_end(seq_id, last=False)
