"""The prefix cache on disk: the hottest KV blocks, by their chain hashes, survive a restart.

A snapshot is two files in the directory: `blocks-<id>.safetensors` (one tensor `kv`,
`[num_layers, 2, num_blocks, block_size, Hkv, D]`) and `manifest.json`, which names the model identity, dtype,
quantization, block size, block shape and format version, lists each block's chain hash and its parent, and
holds the data file's sha256. Both are written to temporary names and renamed into place, the manifest last, so
a crash mid-write leaves the previous snapshot whole. At start a manifest that matches the loaded model in every
field is loaded into the prefix cache; anything else is ignored with one log line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:
    from qwen3_api.engine.llm_engine import LLMEngine

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
HASH_SCHEME = "sha256-chain/int64-tokens"  # kv_cache.hash_block


@dataclass(frozen=True)
class PrefixCacheFormat:
    """What must match for stored blocks to be valid here: any difference and the K/V would be wrong."""

    model_identity: str
    dtype: str
    quantization: str
    block_size: int
    block_shape: tuple[int, ...]  # [num_layers, 2, block_size, Hkv, D]
    format_version: int = FORMAT_VERSION
    hash_scheme: str = HASH_SCHEME

    def manifest_fields(self) -> dict[str, Any]:
        return {**asdict(self), "block_shape": list(self.block_shape)}


@dataclass
class PrefixSnapshot:
    """Blocks in parent-first order: chain hash, parent hash (None for a chain's first block), and their K/V."""

    hashes: list[bytes]
    parents: list[bytes | None]
    kv: torch.Tensor  # [num_layers, 2, len(hashes), block_size, Hkv, D]

    def __len__(self) -> int:
        return len(self.hashes)


class RejectedSnapshot(Exception):
    """A stored snapshot that must not be loaded; the message says why."""


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomically(path: Path, write: Any) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(temporary)
        with temporary.open("rb") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


class PrefixStore:
    """Reads and writes snapshots of one format in one directory, within `max_bytes` of block data."""

    def __init__(self, directory: Path, max_bytes: int, fmt: PrefixCacheFormat, block_bytes: int) -> None:
        self.directory = Path(directory)
        self.format = fmt
        self.max_blocks = max(0, max_bytes // block_bytes)

    def save(self, snapshot: PrefixSnapshot) -> Path:
        """Write `snapshot` (its first `max_blocks` blocks) as the directory's current snapshot."""
        self.directory.mkdir(parents=True, exist_ok=True)
        count = min(len(snapshot), self.max_blocks)
        data_name = f"blocks-{uuid.uuid4().hex}.safetensors"
        data_path = self.directory / data_name
        kv = snapshot.kv[:, :, :count].contiguous()
        _write_atomically(data_path, lambda p: save_file({"kv": kv}, str(p)))
        manifest = {
            **self.format.manifest_fields(),
            "data_file": data_name,
            "data_sha256": _sha256_file(data_path),
            "num_blocks": count,
            "hashes": [h.hex() for h in snapshot.hashes[:count]],
            "parents": [p.hex() if p is not None else None for p in snapshot.parents[:count]],
            "written_at": time.time(),
        }
        _write_atomically(self.directory / MANIFEST, lambda p: p.write_text(json.dumps(manifest)))
        for old in self.directory.glob("blocks-*.safetensors"):  # the previous snapshot's data
            if old.name != data_name:
                old.unlink(missing_ok=True)
        return data_path

    def load(self, max_blocks: int) -> PrefixSnapshot | None:
        """The stored snapshot (its first `max_blocks` blocks) if it matches this format; None, with one log
        line saying why, if there is none or it is mismatched or corrupt."""
        path = self.directory / MANIFEST
        if not path.exists():
            logger.info("prefix cache: no snapshot in %s yet", self.directory)
            return None
        try:
            return self._load(path, max_blocks)
        except RejectedSnapshot as exc:
            logger.warning("prefix cache: ignoring the snapshot in %s: %s", self.directory, exc)
        except Exception as exc:  # unreadable in any other way: never loaded, never fatal
            logger.warning("prefix cache: ignoring the snapshot in %s: unreadable (%s)", self.directory, exc)
        return None

    def _load(self, path: Path, max_blocks: int) -> PrefixSnapshot:
        try:
            manifest = json.loads(path.read_text())
        except ValueError as exc:
            raise RejectedSnapshot(f"the manifest is not valid JSON ({exc})") from exc
        if not isinstance(manifest, dict):
            raise RejectedSnapshot("the manifest is not a JSON object")
        for name, expected in self.format.manifest_fields().items():
            if manifest.get(name) != expected:
                raise RejectedSnapshot(f"{name} is {manifest.get(name)!r}, this server has {expected!r}")
        data_path = self.directory / str(manifest.get("data_file", ""))
        if data_path.parent != self.directory or not data_path.is_file():
            raise RejectedSnapshot(f"its data file {manifest.get('data_file')!r} is missing")
        if _sha256_file(data_path) != manifest.get("data_sha256"):
            raise RejectedSnapshot(f"{data_path.name} does not match the manifest's sha256 (corrupt)")
        kv = load_file(str(data_path))["kv"]
        hashes = [bytes.fromhex(h) for h in manifest["hashes"]]
        parents = [bytes.fromhex(p) if p is not None else None for p in manifest["parents"]]
        layers, two, block_size, heads, head_dim = self.format.block_shape
        expected_shape = (layers, two, len(hashes), block_size, heads, head_dim)
        if tuple(kv.shape) != expected_shape or len(parents) != len(hashes) or manifest["num_blocks"] != len(hashes):
            raise RejectedSnapshot(f"the data has shape {tuple(kv.shape)}, the manifest says {expected_shape}")
        if str(kv.dtype).removeprefix("torch.") != self.format.dtype:
            raise RejectedSnapshot(f"the data is {kv.dtype}, the manifest says {self.format.dtype}")
        count = min(len(hashes), max_blocks)  # a prefix of a parent-first list keeps every parent
        return PrefixSnapshot(hashes[:count], parents[:count], kv[:, :, :count])


class PrefixPersistence:
    """Saves an engine's hottest prefix blocks periodically (in a writer thread) and at shutdown; restores them
    at start. `maybe_save` and `save_now` run on the thread that owns the engine core."""

    def __init__(self, core: LLMEngine, store: PrefixStore, interval_s: float) -> None:
        self.core = core
        self.store = store
        self.interval_s = interval_s
        self._last_save = time.monotonic()
        self._saved_version = core.prefix_cache_version()
        self._writer: threading.Thread | None = None

    def restore(self) -> int:
        """Load the stored snapshot into the prefix cache (up to the KV budget); the number of blocks loaded."""
        snapshot = self.store.load(self.core.num_kv_blocks)
        if snapshot is None:
            return 0
        loaded = self.core.import_prefix_cache(snapshot)
        self._saved_version = self.core.prefix_cache_version()
        logger.info("prefix cache: loaded %d blocks (%d tokens) from %s", loaded,
                    loaded * self.store.format.block_size, self.store.directory)  # fmt: skip
        return loaded

    def maybe_save(self) -> None:
        """Between steps: when the interval has passed and the cache changed, snapshot it and write it in the
        background (the copy is taken here, so later steps cannot change what is written)."""
        if time.monotonic() - self._last_save < self.interval_s:
            return
        self._last_save = time.monotonic()
        if self._writer is not None and self._writer.is_alive():
            return
        version = self.core.prefix_cache_version()
        if version == self._saved_version:
            return
        snapshot = self.core.export_prefix_cache(self.store.max_blocks)
        self._saved_version = version
        self._writer = threading.Thread(target=self._write, args=(snapshot,), name="prefix-cache-writer", daemon=True)
        self._writer.start()

    def save_now(self) -> None:
        """At shutdown, the engine stopped: wait for a write in progress, then write the current cache."""
        if self._writer is not None:
            self._writer.join()
        if self.core.prefix_cache_version() != self._saved_version:
            self._write(self.core.export_prefix_cache(self.store.max_blocks))

    def _write(self, snapshot: PrefixSnapshot) -> None:
        if not len(snapshot):
            return
        started = time.perf_counter()
        try:
            self.store.save(snapshot)
        except Exception:
            logger.exception("prefix cache: writing the snapshot to %s failed", self.store.directory)
            return
        logger.info("prefix cache: saved %d blocks to %s in %.2f s", min(len(snapshot), self.store.max_blocks),
                    self.store.directory, time.perf_counter() - started)  # fmt: skip
