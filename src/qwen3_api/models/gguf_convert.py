"""Convert a safetensors checkpoint to a quantized GGUF once, into a cache, so llama.cpp can serve it.

The checkpoint is first written losslessly (F32 for a float32 checkpoint, BF16 or F16 for a 16-bit one) by
`gguf_export`, then quantized by llama.cpp's own quantizer (`llama_model_quantize`), which makes every type it
knows, K-quants included, exactly as llama.cpp's `llama-quantize` would. The cache key is the checkpoint's identity
(config, weight index, and each weight file's name, size and mtime) plus the quant type and the exporter version,
so a changed checkpoint converts again and a different quant gets its own file. Files appear by atomic rename
only: an interrupted conversion leaves no partial file where a later start would find it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, get_args

from platformdirs import user_cache_dir

from qwen3_api.errors import ModelLoadError

logger = logging.getLogger(__name__)

GGUFQuant = Literal["q8_0", "q4_k_m", "q4_0"]
GGUF_QUANTS: tuple[str, ...] = get_args(GGUFQuant)
# llama.cpp's enum llama_ftype values of each quant.
_LLAMA_FTYPES = {"q8_0": 7, "q4_0": 2, "q4_k_m": 15}
# Bumped whenever the exporter's output changes, so cached files made by older code are not reused.
EXPORT_VERSION = 1


def gguf_cache_dir(override: Path | None = None) -> Path:
    """Where converted GGUFs live: `override` (--gguf-cache-dir), else the user cache dir."""
    return Path(override) if override is not None else Path(user_cache_dir("qwen3-api")) / "gguf"


def checkpoint_key(model_dir: Path) -> str:
    """A short hash of the checkpoint's identity: config, weight index, and every weight file's name, size, mtime."""
    digest = hashlib.sha256(f"export-v{EXPORT_VERSION}".encode())
    for name in ("config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"):
        path = model_dir / name
        if path.exists():
            digest.update(name.encode() + b"\0" + path.read_bytes())
    for weights in sorted(model_dir.glob("*.safetensors")):
        stat = weights.stat()
        digest.update(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def converted_path(model_dir: Path, quant: GGUFQuant, cache_dir: Path | None = None) -> Path:
    """The cache file the conversion of `model_dir` to `quant` gets (whether or not it exists yet)."""
    return gguf_cache_dir(cache_dir) / f"{model_dir.name}-{checkpoint_key(model_dir)}-{quant.upper()}.gguf"


def _lossless_type(model_dir: Path) -> Literal["F32", "BF16", "F16"]:
    config = json.loads((model_dir / "config.json").read_text())
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    return {"float32": "F32", "float16": "F16"}.get(dtype, "BF16")  # type: ignore[return-value]


def _progress_bar(description: str) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """(update(done, total), close()) of a rich progress bar on stderr; log lines instead when it is no terminal."""
    if not sys.stderr.isatty():
        last = [-1]

        def log_update(done: int, total: int) -> None:
            step = done * 10 // total
            if step != last[0]:
                last[0] = step
                logger.info("%s: %d/%d tensors", description, done, total)

        return log_update, lambda: None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True),
    )  # fmt: skip
    task = progress.add_task(description, total=None)
    progress.start()

    def update(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    return update, progress.stop


def quantize_gguf(source: Path, target: Path, quant: GGUFQuant, n_threads: int | None = None) -> None:
    """Quantize the GGUF `source` to `target` with llama.cpp's own quantizer."""
    import llama_cpp

    from qwen3_api.models.llama_vocab import init_llama_backend

    init_llama_backend()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _LLAMA_FTYPES[quant]
    params.nthread = n_threads or 0  # 0: llama.cpp uses every core
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if status != 0:
        raise ModelLoadError(f"llama.cpp could not quantize {source} to {quant} (status {status})")


def convert_checkpoint(
    model_dir: Path,
    quant: GGUFQuant,
    cache_dir: Path | None = None,
    on_tensor: Callable[[int, int], None] | None = None,
) -> Path:
    """The GGUF of `model_dir` quantized to `quant`, converted on first use and reused from the cache after.

    `on_tensor(done, total)` sees the lossless write's progress (a rich bar on a terminal by default).
    """
    from qwen3_api.models.gguf_export import write_gguf

    if quant not in GGUF_QUANTS:
        raise ValueError(f"unknown GGUF quant {quant!r}; choose one of {', '.join(GGUF_QUANTS)}")
    target = converted_path(model_dir, quant, cache_dir)
    if target.is_file():
        logger.info("using the GGUF converted earlier: %s", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lossless = _lossless_type(model_dir)
    started = time.perf_counter()
    logger.info("converting %s to GGUF %s once (cached in %s)", model_dir, quant, target.parent)
    # Both files are staged next to the target (same filesystem, so the rename is atomic) and removed on failure.
    with tempfile.TemporaryDirectory(prefix=target.name + ".", suffix=".partial", dir=target.parent) as staging:
        intermediate = Path(staging) / f"{model_dir.name}-{lossless}.gguf"
        update, close = (on_tensor, lambda: None) if on_tensor else _progress_bar(f"writing {lossless} GGUF")
        try:
            write_gguf(model_dir, intermediate, lossless, on_tensor=update)
        finally:
            close()
        written = time.perf_counter()
        logger.info("wrote the %s GGUF in %.1f s; quantizing to %s with llama.cpp", lossless, written - started, quant)
        quantized = Path(staging) / target.name
        quantize_gguf(intermediate, quantized, quant)
        quantized.chmod(0o644)
        os.replace(quantized, target)
    logger.info(
        "converted to %s in %.1f s (quantizing %.1f s): %s (%.2f GiB)",
        quant, time.perf_counter() - started, time.perf_counter() - written, target, target.stat().st_size / 2**30,
    )  # fmt: skip
    return target
