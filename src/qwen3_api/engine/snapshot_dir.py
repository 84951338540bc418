"""One snapshot at a time in a directory, for the persistent prefix cache of every backend.

A snapshot is `manifest.json` plus one safetensors data file. The manifest names the backend and every field that
must match for the data to be valid here (model identity, dtype, quantization, KV layout, format version), the
data file and its sha256. Both files are written to temporary names and renamed into place, the manifest last,
so a crash mid-write leaves the previous snapshot whole; the previous data file is removed only after the new
manifest is in place, so each snapshot gets at most half the directory budget and the directory never holds
more than the budget, even mid-write. Loading checks every format field, the data file's presence, size and
sha256; whatever does not match is ignored with one log line, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: one manifest for every backend, block hashes and token ids in the data file
MANIFEST = "manifest.json"
DATA_GLOB = "snapshot-*.safetensors"
# Room kept per snapshot for the manifest and the data file's header (both small and of bounded size).
METADATA_ALLOWANCE = 16 * 2**10


class RejectedSnapshot(Exception):
    """A stored snapshot that must not be loaded; the message says why."""


@dataclass
class StoredSnapshot:
    """A snapshot read back: its manifest and its tensors."""

    manifest: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def _write_atomically(path: Path, write: Any) -> None:
    temporary = _temporary_name(path)
    try:
        write(temporary)
        with temporary.open("rb") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


class SnapshotDirectory:
    """Writes and reads the snapshot in `directory` for one format (`fields`: what a manifest must match), the
    directory never above `max_bytes`."""

    def __init__(self, directory: Path, max_bytes: int, fields: dict[str, Any]) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.fields = {"format_version": FORMAT_VERSION, **fields}

    @property
    def data_budget(self) -> int:
        """Bytes of tensor data one snapshot may hold: half the budget (the previous snapshot stays until the new
        one is in place), less room for the manifest and the data file's header."""
        return max(0, self.max_bytes // 2 - METADATA_ALLOWANCE)

    def disk_bytes(self) -> int:
        """What the directory holds now (for tests and the log)."""
        return sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file()) if self.directory.is_dir() else 0

    def save(self, tensors: dict[str, torch.Tensor], entries: dict[str, Any]) -> Path:
        """Write `tensors` (at most `data_budget` bytes) with manifest `entries` as the current snapshot."""
        data_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
        if data_bytes > self.data_budget:
            raise ValueError(f"a snapshot of {data_bytes} bytes is over the budget of {self.data_budget}")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()
        data_name = f"snapshot-{uuid.uuid4().hex}.safetensors"
        data_path = self.directory / data_name
        contiguous = {name: t.contiguous() for name, t in tensors.items()}
        _write_atomically(data_path, lambda p: save_file(contiguous, str(p)))
        manifest = {
            **self.fields,
            **entries,
            "data_file": data_name,
            "data_bytes": data_path.stat().st_size,
            "data_sha256": _sha256_file(data_path),
            "written_at": time.time(),
        }
        _write_atomically(self.directory / MANIFEST, lambda p: p.write_text(json.dumps(manifest)))
        for old in self.directory.glob(DATA_GLOB):  # the previous snapshot's data
            if old.name != data_name:
                old.unlink(missing_ok=True)
        return data_path

    def _remove_leftovers(self) -> None:
        """Temporary files of a write that never finished (a crash) and data files no manifest names."""
        for temporary in self.directory.glob(".*.tmp"):
            temporary.unlink(missing_ok=True)
        try:
            current = json.loads((self.directory / MANIFEST).read_text()).get("data_file")
        except (OSError, ValueError, AttributeError):
            current = None
        for data in self.directory.glob(DATA_GLOB):
            if data.name != current:
                data.unlink(missing_ok=True)

    def load(self) -> StoredSnapshot | None:
        """The stored snapshot if it matches this format; None, with one log line saying why, if there is none
        or it is mismatched or corrupt."""
        path = self.directory / MANIFEST
        if not path.exists():
            logger.info("prefix cache: no snapshot in %s yet", self.directory)
            return None
        try:
            return self._load(path)
        except RejectedSnapshot as exc:
            logger.warning("prefix cache: ignoring the snapshot in %s: %s", self.directory, exc)
        except Exception as exc:  # unreadable in any other way: never loaded, never fatal
            logger.warning("prefix cache: ignoring the snapshot in %s: unreadable (%s)", self.directory, exc)
        return None

    def _load(self, path: Path) -> StoredSnapshot:
        try:
            manifest = json.loads(path.read_text())
        except ValueError as exc:
            raise RejectedSnapshot(f"the manifest is not valid JSON ({exc})") from exc
        if not isinstance(manifest, dict):
            raise RejectedSnapshot("the manifest is not a JSON object")
        for name, expected in self.fields.items():
            if manifest.get(name) != expected:
                raise RejectedSnapshot(f"{name} is {manifest.get(name)!r}, this server has {expected!r}")
        data_path = self.directory / str(manifest.get("data_file", ""))
        if data_path.parent != self.directory or not data_path.is_file():
            raise RejectedSnapshot(f"its data file {manifest.get('data_file')!r} is missing")
        if data_path.stat().st_size != manifest.get("data_bytes"):
            raise RejectedSnapshot(f"{data_path.name} has {data_path.stat().st_size} bytes, the manifest says "
                                   f"{manifest.get('data_bytes')} (corrupt)")  # fmt: skip
        if _sha256_file(data_path) != manifest.get("data_sha256"):
            raise RejectedSnapshot(f"{data_path.name} does not match the manifest's sha256 (corrupt)")
        return StoredSnapshot(manifest, load_file(str(data_path)))
