"""A model's identity: a stable digest of what was loaded and how, so caches never mix two models' outputs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

# Files up to this size (configs, tokenizer, chat template) are hashed whole; larger ones (weights) by name, size
# and modification time, so that start-up never reads gigabytes of weights just to name them.
HASHED_FILE_LIMIT = 64 * 2**20


def _digest_file(digest: hashlib._Hash, path: Path) -> None:
    stat = path.stat()
    digest.update(f"{path.name}\0{stat.st_size}\0".encode())
    if stat.st_size <= HASHED_FILE_LIMIT:
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    else:
        digest.update(str(stat.st_mtime_ns).encode())


def files_fingerprint(path: Path) -> str:
    """sha256 over a model directory's files (or one model file, e.g. a GGUF), as described above."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    for file in files:
        _digest_file(digest, file.resolve())
    return digest.hexdigest()


def model_identity(name: str, path: Path, **runtime: str) -> str:
    """The identity of model `name` loaded from `path` with `runtime` choices (backend, dtype, quantization):
    a hex digest that changes whenever any of them, a config, the tokenizer, the chat template or a weight file
    changes."""
    payload = {"name": name, "path": str(path.resolve()), "files": files_fingerprint(path), "runtime": runtime}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
