"""Resolve what `--model` names into a local GGUF file, and read a GGUF file's metadata quickly.

Accepted names: a local `.gguf` file; an HF repo plus a quant or file name (`Qwen/Qwen3-4B-GGUF:Q4_K_M`,
`Qwen/Qwen3-4B-GGUF:Qwen3-4B-Q4_K_M.gguf`); a test model spec with a GGUF type (`test:tiny:gguf=Q8_0`).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qwen3_api.errors import ModelLoadError

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
GGUF_HINT = (
    "Name a GGUF model as a local file (/path/to/model.gguf), an HF repo and quant (Qwen/Qwen3-4B-GGUF:Q4_K_M), "
    "or the offline test model test:tiny:gguf=Q8_0"
)
# A split GGUF's parts end in -00001-of-00003; llama.cpp opens the first part and finds the others.
_SPLIT_SUFFIX = re.compile(r"-(\d{5})-of-(\d{5})$")
# The quant label at the end of a file stem: Q4_K_M, IQ2_XXS, UD-Q4_K_XL, Q8_0, BF16, F16, F32, ...
_QUANT_SUFFIX = re.compile(r"(?:^|[-_.])((?:UD-)?(?:I?Q\d\w*|TQ\d\w*|MXFP4\w*|BF16|F16|F32))$", re.IGNORECASE)


# --- metadata -------------------------------------------------------------------------------------------------

# GGUF value types: (struct format, numpy dtype) for the fixed-size ones; 8 = string, 9 = array.
_SCALARS: dict[int, tuple[str, str]] = {
    0: ("<B", "<u1"), 1: ("<b", "<i1"), 2: ("<H", "<u2"), 3: ("<h", "<i2"), 4: ("<I", "<u4"), 5: ("<i", "<i4"),
    6: ("<f", "<f4"), 7: ("<?", "?"), 10: ("<Q", "<u8"), 11: ("<q", "<i8"), 12: ("<d", "<f8"),
}  # fmt: skip
_STRING, _ARRAY = 8, 9


class _Cursor:
    """Reads little-endian GGUF values from a buffer, front to back."""

    def __init__(self, buffer: Any) -> None:
        self.buffer = buffer
        self.offset = 0

    def unpack(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.buffer, self.offset)
        self.offset += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.unpack("<Q")
        start, self.offset = self.offset, self.offset + length
        return str(self.buffer[start : self.offset].decode("utf-8", errors="replace"))

    def value(self, value_type: int) -> Any:
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            item_type, count = self.unpack("<I"), self.unpack("<Q")
            if item_type == _STRING:
                return [self.string() for _ in range(count)]
            if item_type in _SCALARS:
                dtype = np.dtype(_SCALARS[item_type][1])
                items = np.frombuffer(self.buffer, dtype, count, self.offset).tolist()
                self.offset += count * dtype.itemsize
                return items
            return [self.value(item_type) for _ in range(count)]
        if value_type not in _SCALARS:
            raise ValueError(f"unknown GGUF value type {value_type}")
        return self.unpack(_SCALARS[value_type][0])


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """Every key/value of a GGUF file's header (arrays as lists); tensor data is not touched.

    Much faster than `gguf.GGUFReader` on a 151k-token vocabulary (under a second against ~15 s), which matters
    at server start.
    """
    with _header(path) as (_cursor, metadata, _tensor_count):
        return metadata


@contextlib.contextmanager
def _header(path: Path) -> Iterator[tuple[_Cursor, dict[str, Any], int]]:
    """The file mapped, its metadata read: a cursor at the tensor directory, the metadata, the tensor count."""
    with Path(path).open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
        if buffer[:4] != GGUF_MAGIC:
            raise ModelLoadError(f"{path} is not a GGUF file")
        cursor = _Cursor(buffer)
        cursor.offset = 4
        version, tensor_count, kv_count = cursor.unpack("<I"), cursor.unpack("<Q"), cursor.unpack("<Q")
        if version < 2:
            raise ModelLoadError(f"{path}: GGUF version {version} is too old")
        metadata: dict[str, Any] = {}
        for _ in range(kv_count):
            key = cursor.string()
            metadata[key] = cursor.value(cursor.unpack("<I"))
        yield cursor, metadata, tensor_count


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor of a GGUF file: its name, ggml type id and shape (ggml order: ne[0] first)."""

    name: str
    ggml_type: int
    shape: tuple[int, ...]


def read_gguf_tensor_infos(path: Path) -> list[GGUFTensorInfo]:
    """The tensor directory of a GGUF file (after its metadata); tensor data is not touched."""
    with _header(path) as (cursor, _metadata, tensor_count):
        infos = []
        for _ in range(tensor_count):
            name = cursor.string()
            shape = tuple(cursor.unpack("<Q") for _ in range(cursor.unpack("<I")))
            ggml_type = cursor.unpack("<I")
            cursor.unpack("<Q")  # data offset
            infos.append(GGUFTensorInfo(name, ggml_type, shape))
        return infos


# --- resolving names ------------------------------------------------------------------------------------------


def _split_hub_name(name: str) -> tuple[str, str] | None:
    """(repo id, quant or file) of `owner/repo:what`, or (repo id, "") of `owner/repo-GGUF`; None otherwise."""
    repo, sep, what = name.partition(":")
    if repo.count("/") != 1 or repo.startswith((".", "/", "~")):
        return None
    if sep:
        return repo, what
    return (repo, "") if repo.lower().endswith("-gguf") else None


def is_gguf_spec(name: str) -> bool:
    """Whether `name` names a GGUF model (a .gguf file, a GGUF repo with a quant, or a test spec with gguf=)."""
    if name.startswith("test:"):
        options = name.split(":", 2)[2] if name.count(":") >= 2 else ""
        return any(item.partition("=")[0].strip() == "gguf" for item in options.split(","))
    if name.lower().endswith(".gguf") and not _split_hub_name(name):
        return True
    return _split_hub_name(name) is not None


def quant_of(file_name: str) -> str:
    """The quant label of a GGUF file name (`Qwen3-4B-Q4_K_M.gguf` -> `Q4_K_M`), or the file name."""
    stem = _SPLIT_SUFFIX.sub("", Path(file_name).name.removesuffix(".gguf"))
    match = _QUANT_SUFFIX.search(stem)
    return match.group(1) if match else Path(file_name).name


def _model_ggufs(files: list[str]) -> list[str]:
    """The GGUF files among `files` that hold a model (not a vision projector)."""
    return [f for f in files if f.lower().endswith(".gguf") and not Path(f).name.lower().startswith("mmproj")]


def _matching_files(files: list[str], wanted: str) -> list[str]:
    """The repo files `wanted` (a quant or a file name, any case) picks; all parts of a split GGUF, sorted."""
    ggufs = _model_ggufs(files)
    wanted_lower = wanted.lower()
    if wanted_lower.endswith(".gguf"):
        return sorted(f for f in ggufs if wanted_lower in (f.lower(), Path(f).name.lower()))
    return sorted(f for f in ggufs if quant_of(f).lower() == wanted_lower)


def _is_complete(picked: list[str]) -> bool:
    """Whether `picked` is one whole file or every part of a split GGUF."""
    split = _SPLIT_SUFFIX.search(picked[0].removesuffix(".gguf"))
    return len(picked) == (int(split.group(2)) if split else 1)


def _available(files: list[str]) -> str:
    quants = sorted({quant_of(f) for f in _model_ggufs(files)})
    return ", ".join(quants) or "none"


def _cached_repo_files(repo_id: str) -> tuple[Path, list[str]] | None:
    """The local HF cache's snapshot of `repo_id` and the files in it (relative paths), if it is cached."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=["*.gguf"]))
    except (LocalEntryNotFoundError, OSError):
        return None
    return snapshot, sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*.gguf"))


def _hub_repo_files(repo_id: str) -> list[str]:
    """The files of `repo_id` on the hub (raises the hub's errors)."""
    from huggingface_hub import HfApi

    return list(HfApi().list_repo_files(repo_id))


def _resolve_hub(repo_id: str, wanted: str) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    cached = _cached_repo_files(repo_id)
    if cached is not None and wanted:
        snapshot, files = cached
        picked = _matching_files(files, wanted)
        if picked and _is_complete(picked):
            return snapshot / picked[0]
    try:
        files = _hub_repo_files(repo_id)
    except RepositoryNotFoundError as exc:
        raise ModelLoadError(f"GGUF repo {repo_id!r} was not found on the hub. {GGUF_HINT}") from exc
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:  # offline mode is a ConnectionError
        cached_note = f" (cached here: {_available(cached[1])})" if cached is not None else ""
        if not wanted:
            raise ModelLoadError(f"name a quant of {repo_id}, e.g. {repo_id}:Q4_K_M{cached_note}") from exc
        raise ModelLoadError(
            f"{repo_id}:{wanted} is not in the local HF cache{cached_note} and the hub cannot be reached. {GGUF_HINT}"
        ) from exc
    if not wanted:
        raise ModelLoadError(f"name a quant of {repo_id}, e.g. {repo_id}:Q4_K_M; available: {_available(files)}")
    picked = _matching_files(files, wanted)
    if not picked:
        raise ModelLoadError(f"{repo_id} has no GGUF file for {wanted!r}; available: {_available(files)}")
    if len({_SPLIT_SUFFIX.sub("", f.removesuffix(".gguf")) for f in picked}) > 1:
        raise ModelLoadError(f"{wanted!r} matches several files in {repo_id}: {', '.join(picked)}; name one")
    logger.info("downloading %s from %s", ", ".join(picked), repo_id)
    try:
        # Every part of a split GGUF; llama.cpp opens the first and finds the rest beside it.
        paths = [Path(hf_hub_download(repo_id, file)) for file in picked]
    except (HfHubHTTPError, OSError) as exc:
        raise ModelLoadError(f"downloading {picked[0]} from {repo_id} failed: {exc}") from exc
    return paths[0]


def _resolve_local(path: Path) -> Path:
    if not path.exists():
        raise ModelLoadError(f"GGUF file {path} does not exist. {GGUF_HINT}")
    if not path.is_file():
        raise ModelLoadError(f"{path} is not a file; a GGUF model is one .gguf file")
    with path.open("rb") as file:
        if file.read(4) != GGUF_MAGIC:
            raise ModelLoadError(f"{path} is not a GGUF file (no GGUF magic at its start)")
    return path


def resolve_gguf(name: str) -> Path:
    """The local GGUF file `name` names: a path, or a file of an HF repo (downloaded when needed). A `test:` spec
    is a demo model, built by qwen3_api.runtime.source.resolve_gguf_model."""
    path = Path(name).expanduser()
    if path.exists() or (name.lower().endswith(".gguf") and not _split_hub_name(name)):
        return _resolve_local(path)
    hub = _split_hub_name(name)
    if hub is None:
        raise ModelLoadError(f"{name!r} does not name a GGUF model. {GGUF_HINT}")
    return _resolve_hub(*hub)
