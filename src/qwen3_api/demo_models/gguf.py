"""GGUF files of our test models, written by the production exporter (`qwen3_api.models.gguf_export`) and cached
next to each test model directory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from qwen3_api.models.gguf_export import GGUF_TYPES, GGUFType, parse_gguf_type, write_gguf

__all__ = ["GGUF_TYPES", "GGUFType", "cached_test_gguf", "gguf_file_name", "parse_gguf_type", "write_gguf"]


def gguf_file_name(model_dir: Path, qtype: GGUFType) -> str:
    """The file name a model directory's GGUF gets: `<dir name>-<qtype>.gguf`."""
    return f"{Path(model_dir).name}-{qtype}.gguf"


def cached_test_gguf(qtype: GGUFType = "F32", **model_options: Any) -> Path:
    """The GGUF of `cached_test_model(**model_options)`, cached next to the model directory, built on first use."""
    from qwen3_api.demo_models.checkpoints import cached_test_model

    qtype = parse_gguf_type(qtype)
    model_dir = cached_test_model(**model_options)
    target = model_dir.parent / gguf_file_name(model_dir, qtype)
    if target.exists():
        return target
    # Written under a temporary name and renamed, so a crash or a concurrent build never leaves half a file.
    fd, staging_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".partial", dir=target.parent)
    os.close(fd)
    staging = Path(staging_name)
    try:
        write_gguf(model_dir, staging, qtype)
        staging.chmod(0o644)
        os.replace(staging, target)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    return target
