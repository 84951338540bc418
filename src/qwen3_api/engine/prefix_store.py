"""The prefix cache on disk: what survives a restart, and when it is written.

`PrefixPersistence` saves a backend's hottest cached prefixes now and then (the copy taken between engine steps,
the file written in a thread) and at graceful shutdown, and loads them back at start. What a snapshot holds is
the backend's (`PersistentPrefixCache`): on torch the KV blocks by their chain hashes (`PrefixStore`, here); on
llama.cpp the retained sequences' state (`engine.sequence_store`). Both are written by one `SnapshotDirectory`:
one manifest format, with a `backend` field, atomic writes and a byte budget.

Torch data file tensors: `kv` `[num_layers, 2, num_blocks, block_size, Hkv, D]`, `hashes` and `parents`
`[num_blocks, 32]` uint8 (a chain's first block has an all-zero parent and `has_parent` 0).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import torch

from qwen3_api.engine.snapshot_dir import RejectedSnapshot, SnapshotDirectory

if TYPE_CHECKING:
    from qwen3_api.engine.llm_engine import LLMEngine

logger = logging.getLogger(__name__)

HASH_SCHEME = "sha256-chain/int64-tokens"  # kv_cache.hash_block
HASH_BYTES = 32


@dataclass(frozen=True)
class PrefixCacheFormat:
    """What must match for stored blocks to be valid here: any difference and the K/V would be wrong."""

    model_identity: str
    dtype: str
    quantization: str
    block_size: int
    block_shape: tuple[int, ...]  # [num_layers, 2, block_size, Hkv, D]
    hash_scheme: str = HASH_SCHEME

    def manifest_fields(self) -> dict[str, Any]:
        return {"backend": "torch", **asdict(self), "block_shape": list(self.block_shape)}


@dataclass
class PrefixSnapshot:
    """Blocks in parent-first order: chain hash, parent hash (None for a chain's first block), and their K/V."""

    hashes: list[bytes]
    parents: list[bytes | None]
    kv: torch.Tensor  # [num_layers, 2, len(hashes), block_size, Hkv, D]

    def __len__(self) -> int:
        return len(self.hashes)

    def head(self, count: int) -> PrefixSnapshot:
        """The first `count` blocks: a prefix of a parent-first list keeps every parent."""
        return PrefixSnapshot(self.hashes[:count], self.parents[:count], self.kv[:, :, :count])


def _hash_rows(hashes: list[bytes | None]) -> torch.Tensor:
    raw = b"".join(h if h is not None else bytes(HASH_BYTES) for h in hashes)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(len(hashes), HASH_BYTES)


class PrefixStore:
    """Torch snapshots of one format in one directory, the directory within `max_bytes`."""

    def __init__(self, directory: Path, max_bytes: int, fmt: PrefixCacheFormat, block_bytes: int) -> None:
        self.format = fmt
        self.files = SnapshotDirectory(directory, max_bytes, fmt.manifest_fields())
        # each block also stores its hash and its parent's (and a flag)
        self.max_blocks = self.files.data_budget // (block_bytes + 2 * HASH_BYTES + 1)

    @property
    def directory(self) -> Path:
        return self.files.directory

    def save(self, snapshot: PrefixSnapshot) -> Path:
        """Write `snapshot` (its first `max_blocks` blocks) as the directory's current snapshot."""
        kept = snapshot.head(min(len(snapshot), self.max_blocks))
        tensors = {
            "kv": kept.kv,
            "hashes": _hash_rows(list(kept.hashes)),
            "parents": _hash_rows(kept.parents),
            "has_parent": torch.tensor([p is not None for p in kept.parents], dtype=torch.uint8),
        }
        return self.files.save(tensors, {"num_blocks": len(kept), "num_tokens": len(kept) * self.format.block_size})

    def load(self, max_blocks: int | None = None) -> PrefixSnapshot | None:
        """The stored snapshot (its first `max_blocks` blocks) if it matches this format; None, with one log
        line saying why, if there is none or it is mismatched or corrupt."""
        stored = self.files.load()
        if stored is None:
            return None
        try:
            snapshot = self._decode(stored.manifest, stored.tensors)
        except (RejectedSnapshot, KeyError, ValueError, RuntimeError) as exc:
            logger.warning("prefix cache: ignoring the snapshot in %s: %s", self.directory, exc)
            return None
        return snapshot if max_blocks is None else snapshot.head(min(len(snapshot), max_blocks))

    def _decode(self, manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> PrefixSnapshot:
        kv, hashes, parents, has_parent = (tensors[k] for k in ("kv", "hashes", "parents", "has_parent"))
        count = manifest.get("num_blocks")
        layers, two, block_size, heads, head_dim = self.format.block_shape
        expected = (layers, two, count, block_size, heads, head_dim)
        if tuple(kv.shape) != expected or hashes.shape != (count, HASH_BYTES) or parents.shape != hashes.shape:
            raise RejectedSnapshot(f"the data has shape {tuple(kv.shape)}, the manifest says {expected}")
        if has_parent.shape != (count,):
            raise RejectedSnapshot(f"the data has {has_parent.shape[0]} parent flags for {count} blocks")
        if str(kv.dtype).removeprefix("torch.") != self.format.dtype:
            raise RejectedSnapshot(f"the data is {kv.dtype}, the manifest says {self.format.dtype}")
        hash_list = [bytes(row) for row in hashes.numpy()]
        flags = has_parent.tolist()
        parent_list = [bytes(row) if flag else None for row, flag in zip(parents.numpy(), flags, strict=True)]
        return PrefixSnapshot(hash_list, parent_list, kv)


# ---- saving and restoring, for any backend -------------------------------------------------------------------
S = TypeVar("S")


class SnapshotStore(Protocol[S]):
    """Where a backend's snapshots live."""

    @property
    def directory(self) -> Path: ...

    def save(self, snapshot: S) -> Path: ...

    def load(self) -> S | None: ...


class PersistentPrefixCache(Protocol[S]):
    """A backend's prefix cache as persistence sees it; every method runs on the thread that owns the engine."""

    def version(self) -> int:
        """Changes whenever something enters the cache."""
        ...

    def export(self) -> S:
        """A copy of the hottest cached prefixes, within the store's budget (later steps cannot change it)."""
        ...

    def restore(self, snapshot: S) -> str:
        """Put stored prefixes into the cache (before serving, up to its capacity); says what was loaded."""
        ...

    def describe(self, snapshot: S) -> str: ...


class TorchPrefixCache:
    """The torch engine's block prefix cache (blocks by chain hash)."""

    def __init__(self, engine: LLMEngine, store: PrefixStore) -> None:
        self.engine = engine
        self.store = store

    def version(self) -> int:
        return self.engine.prefix_cache_version()

    def export(self) -> PrefixSnapshot:
        return self.engine.export_prefix_cache(self.store.max_blocks)

    def restore(self, snapshot: PrefixSnapshot) -> str:
        loaded = self.engine.import_prefix_cache(snapshot.head(min(len(snapshot), self.engine.num_kv_blocks)))
        return f"{loaded} blocks ({loaded * self.store.format.block_size} tokens)"

    def describe(self, snapshot: PrefixSnapshot) -> str:
        return f"{min(len(snapshot), self.store.max_blocks)} blocks"


class PrefixPersistence(Generic[S]):
    """Saves a prefix cache's hottest entries periodically (in a writer thread) and at shutdown; restores them
    at start. `maybe_save` and `save_now` run on the thread that owns the engine core."""

    def __init__(self, cache: PersistentPrefixCache[S], store: SnapshotStore[S], interval_s: float) -> None:
        self.cache = cache
        self.store = store
        self.interval_s = interval_s
        self._last_save = time.monotonic()
        self._saved_version = cache.version()
        self._writer: threading.Thread | None = None

    def restore(self) -> None:
        """Load the stored snapshot into the prefix cache (up to its capacity)."""
        snapshot = self.store.load()
        if snapshot is None:
            return
        loaded = self.cache.restore(snapshot)
        self._saved_version = self.cache.version()
        logger.info("prefix cache: loaded %s from %s", loaded, self.store.directory)

    def maybe_save(self) -> None:
        """Between steps: when the interval has passed and the cache changed, snapshot it and write it in the
        background (the copy is taken here, so later steps cannot change what is written)."""
        if time.monotonic() - self._last_save < self.interval_s:
            return
        self._last_save = time.monotonic()
        if self._writer is not None and self._writer.is_alive():
            return
        version = self.cache.version()
        if version == self._saved_version:
            return
        snapshot = self.cache.export()
        self._saved_version = version
        self._writer = threading.Thread(target=self._write, args=(snapshot,), name="prefix-cache-writer", daemon=True)
        self._writer.start()

    def save_now(self) -> None:
        """At shutdown, the engine stopped: wait for a write in progress, then write the current cache."""
        if self._writer is not None:
            self._writer.join()
        if self.cache.version() != self._saved_version:
            self._write(self.cache.export())

    def _write(self, snapshot: S) -> None:
        if not len(snapshot):  # type: ignore[arg-type]
            return
        started = time.perf_counter()
        try:
            self.store.save(snapshot)
        except Exception:
            logger.exception("prefix cache: writing the snapshot to %s failed", self.store.directory)
            return
        logger.info("prefix cache: saved %s to %s in %.2f s", self.cache.describe(snapshot), self.store.directory,
                    time.perf_counter() - started)  # fmt: skip
