"""Build a ready `AsyncEngine` from settings: resolve the model, pick device/dtype/backend, load weights."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwen3_api.config import Settings
from qwen3_api.demo_models.faults import Faults, split_faults
from qwen3_api.engine.async_engine import AsyncEngine
from qwen3_api.engine.core import EngineCore
from qwen3_api.engine.tokenizer import Tokenizer
from qwen3_api.errors import ModelLoadError
from qwen3_api.executors.llamacpp_options import (
    HOST_CACHE_MAX_BYTES,
    HOST_CACHE_SHARE,
    host_cache_bytes_for,
    kv_unified_for,
    retained_sequences_for,
)
from qwen3_api.models.identity import model_identity
from qwen3_api.runtime.source import canonical_model_name, resolve_gguf_model, resolve_model

if TYPE_CHECKING:
    from qwen3_api.engine.llm_engine import LLMEngine
    from qwen3_api.engine.prefix_store import PrefixPersistence

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeChoice:
    """Where and how the model runs, with the reason for each automatic choice."""

    device: str
    dtype: str
    backend: str
    quantize: str
    reason: str


# Measured (issue 10, 2-core AVX-512 CPU, 0.6b shape, c=1): our llama.cpp backend on Q8_0 decodes 19.8 tok/s against
# 10.7 for torch int8 weights; both keep 8-bit weights, so the switch costs no quality. 4-bit files are faster still
# (Q4_0 26.8 tok/s) and stay a choice: --quantize q4_k_m / q4_0.
AUTO_CPU_GGUF_QUANT = "q8_0"


def _safetensors_on_llama_cpp(settings: Settings, device: str) -> RuntimeChoice | None:
    """The runtime for serving a safetensors checkpoint converted to a GGUF quant, when that is what the settings
    ask for or what `auto` picks on a CPU; None when the checkpoint runs on torch."""
    from qwen3_api.models.gguf_convert import GGUF_QUANTS

    quantize: str = settings.quantize
    backend = settings.backend
    auto_pick = backend == "auto" and quantize == "auto" and device == "cpu"
    if not (quantize in GGUF_QUANTS or backend == "llamacpp" or auto_pick):
        return None
    if backend not in ("auto", "llamacpp"):
        raise ModelLoadError(f"--quantize {quantize} makes a GGUF file for llama.cpp: use --backend auto or llamacpp")
    if device != "cpu":
        raise ModelLoadError(f"a GGUF quant (--quantize {quantize}, llama.cpp) runs on the CPU here, not on {device}")
    if quantize in ("none", "int8"):
        raise ModelLoadError(
            f"--quantize {quantize} runs on torch; llama.cpp serves a checkpoint as --quantize {'|'.join(GGUF_QUANTS)}"
        )
    reasons = []
    if quantize == "auto":
        quantize = AUTO_CPU_GGUF_QUANT
        reasons.append(
            f"quantize {quantize} on llama.cpp (on CPU measured 1.85x torch int8 decode at one request, same 8-bit "
            "weights; --quantize int8 keeps torch, q4_k_m/q4_0 are faster 4-bit files)"
        )
    reasons.append("the checkpoint is converted to GGUF once and cached")
    return RuntimeChoice("cpu", "gguf", "llamacpp", quantize, "; ".join(reasons))


def choose_runtime(settings: Settings, gguf: bool = False) -> RuntimeChoice:
    """Resolve `auto` device/dtype/backend/quantize for this machine and model (`gguf`: the model is a GGUF file)."""
    import torch

    if gguf:
        if settings.backend not in ("auto", "llamacpp"):
            raise ModelLoadError(f"GGUF models run on --backend llamacpp, not {settings.backend}")
        if settings.quantize not in ("auto", "none"):
            raise ModelLoadError(
                f"--quantize {settings.quantize} converts a safetensors checkpoint; a GGUF file runs as it is "
                "(pick the quant by its file instead)"
            )
        why = "a GGUF model: llama.cpp runs it, with our scheduler, sampler and APIs on top"
        return RuntimeChoice("cpu", "gguf", "llamacpp", "none", why if settings.backend == "auto" else "as configured")
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for, but torch sees no CUDA device")
    machine = settings.device if settings.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    converted = _safetensors_on_llama_cpp(settings, "cpu" if settings.backend == "llamacpp" else machine)
    if converted is not None:
        return converted
    reasons = []
    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        reasons.append(f"device {device} ({'a GPU is available' if device == 'cuda' else 'no GPU found'})")
    elif device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for, but torch sees no CUDA device")
    dtype = settings.dtype
    if dtype == "auto":
        # On CPUs without native bf16 matmuls (no AVX-512 BF16/AMX), bf16 is compute-bound and batches poorly;
        # float32 runs at memory speed and scales with batch size, so it serves more tokens per second.
        dtype = "bfloat16" if device == "cuda" else "float32"
        reasons.append(f"dtype {dtype} ({'native on GPUs' if device == 'cuda' else 'fastest batched CPU matmuls'})")
    backend = settings.backend
    if backend == "auto":
        backend = "torch"
        reasons.append("backend torch (continuous batching)")
    quantize = settings.quantize
    if quantize == "auto":
        # Measured on a 2-core AVX2 CPU (0.6b shape): int8 weights decode 2.3x faster than float32 and 1.3x
        # faster than bfloat16 at batch 1, 1.5x float32 at batch 8. GPUs run bf16 at full speed.
        quantize = "int8" if backend == "torch" and device == "cpu" else "none"
        if quantize == "int8":
            reasons.append("int8 weights (fastest measured on CPU; --quantize none keeps full precision)")
    if quantize != "none" and backend != "torch":
        raise ModelLoadError(f"--quantize {quantize} needs the torch backend, not {backend}")
    return RuntimeChoice(device, dtype, backend, quantize, "; ".join(reasons) or "as configured")


def model_max_len(model_dir: Path) -> int:
    config = json.loads((model_dir / "config.json").read_text())
    return int(config.get("max_position_embeddings", 32768))


# llama.cpp's throughput grows little past 4 sequences per decode on a few CPU cores (measured on 2 cores, 0.6b Q8_0:
# a 4-sequence step costs 2.5x a 1-sequence step), and each sequence owns its share of the KV budget: fewer
# sequences give each a longer context.
LLAMACPP_DEFAULT_MAX_NUM_SEQS = 4


def llamacpp_settings(settings: Settings) -> Settings:
    """`settings` for the llama.cpp backend: `max_num_seqs` defaults to LLAMACPP_DEFAULT_MAX_NUM_SEQS there
    unless it was set (flag or environment)."""
    if "max_num_seqs" in settings.model_fields_set:
        return settings
    return settings.model_copy(update={"max_num_seqs": LLAMACPP_DEFAULT_MAX_NUM_SEQS})


def available_memory_bytes() -> int:
    """Memory the system can give without swapping: MemAvailable from /proc/meminfo, else free physical pages."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


@dataclass(frozen=True)
class LlamaCppKVPlan:
    """How many KV cells llama.cpp gets and how long one sequence may grow, with the budget behind it."""

    cells: int  # all sequences together
    max_model_len: int
    budget_gib: float
    source: str  # where the budget came from, for the log
    unified: bool  # one pool for all sequences, else a stream of max_model_len cells each (`kv_unified_for`)
    host_cache_bytes: int = 0  # finished sequences' states kept in host memory (`host_cache_bytes_for`)


def llamacpp_kv_plan(
    settings: Settings, metadata: dict[str, object], model_bytes: int, available_bytes: int | None = None
) -> LlamaCppKVPlan:
    """The llama.cpp KV budget: `--kv-cache-memory` GiB, else `llamacpp_kv_memory_share` of the memory available
    after the (memory-mapped) weights, and the layout (`kv_unified_for`: per-sequence when every sequence fits at
    full length, unless set). With one shared pool a single sequence may use all of it; per-sequence pools split
    it evenly."""
    arch = str(metadata.get("general.architecture", "qwen3"))
    context = int(metadata.get(f"{arch}.context_length", 32768))  # type: ignore[call-overload]
    layers = int(metadata.get(f"{arch}.block_count", 1))  # type: ignore[call-overload]
    kv_heads = int(metadata.get(f"{arch}.attention.head_count_kv", 1))  # type: ignore[call-overload]
    head_dim = int(metadata.get(f"{arch}.attention.key_length", 128))  # type: ignore[call-overload]
    element_bytes = {"f16": 2.0, "q8_0": 34 / 32}[settings.kv_cache_dtype]
    bytes_per_token = 2 * layers * kv_heads * head_dim * element_bytes  # K and V
    available = available_memory_bytes() if available_bytes is None else available_bytes
    if settings.kv_cache_memory is not None:
        budget, source = settings.kv_cache_memory * 2**30, "--kv-cache-memory"
    else:
        budget = settings.llamacpp_kv_memory_share * max(available - model_bytes, 0)
        source = (
            f"{settings.llamacpp_kv_memory_share:.0%} of {available / 2**30:.1f} GiB available less "
            f"{model_bytes / 2**30:.1f} GiB of weights"
        )
    total = int(budget // bytes_per_token)
    wanted = min(settings.max_model_len or context, context)
    unified = kv_unified_for(settings, total, wanted)
    per_sequence = total if unified else total // settings.max_num_seqs
    if per_sequence < 64:
        raise ModelLoadError(
            f"a KV budget of {budget / 2**30:.2f} GiB ({source}) is too small for {settings.max_num_seqs} sequences"
        )
    if per_sequence < wanted:
        logger.warning(
            "KV budget %.2f GiB holds %d tokens %s: max_model_len lowered from %d",
            budget / 2**30, per_sequence, "in all" if unified else "per sequence", wanted,
        )  # fmt: skip
    max_model_len = min(wanted, per_sequence)
    # More cells than every sequence id at full length could use (the running ones and those that keep finished
    # conversations for prefix reuse) are never needed.
    sequences = settings.max_num_seqs + retained_sequences_for(settings, settings.max_num_seqs)
    cells = min(total, sequences * max_model_len)
    if not unified:
        cells = settings.max_num_seqs * max_model_len
    kv_bytes = cells * bytes_per_token
    host = host_cache_bytes_for(settings, int(available - model_bytes - kv_bytes))
    return LlamaCppKVPlan(cells, max_model_len, kv_bytes / 2**30, source, unified, host)


def _load_gguf_engine(settings: Settings, model_name: str, started: float, faults: Faults | None) -> AsyncEngine:
    path = resolve_gguf_model(model_name)
    runtime = choose_runtime(llamacpp_settings(settings), gguf=True)
    logger.info("runtime: %s (%s)", runtime, runtime.reason)
    return _serve_gguf(settings, path, None, model_name, started, faults)


def _serve_gguf(
    settings: Settings,
    path: Path,
    tokenizer: Tokenizer | None,
    model_name: str,
    started: float,
    faults: Faults | None = None,
) -> AsyncEngine:
    """Serve the GGUF file `path` on llama.cpp; `tokenizer` None takes the file's own (llama.cpp's vocabulary)."""
    from qwen3_api.models.gguf import read_gguf_metadata
    from qwen3_api.runtime.llamacpp_engine import build_llamacpp_engine

    settings = llamacpp_settings(settings)
    metadata = read_gguf_metadata(path)
    tokenizer = tokenizer or Tokenizer.from_gguf(path, metadata)
    plan = llamacpp_kv_plan(settings, metadata, path.stat().st_size)
    layout = "one pool shared by all sequences" if plan.unified else "split evenly per sequence"
    if settings.llamacpp_kv_unified is None:
        why = "every sequence fits at full length" if not plan.unified else "not every sequence fits at full length"
        layout += f" (chosen: {'kept conversations' if settings.llamacpp_retained_sequences else why})"
    logger.info(
        "llama.cpp KV: %d %s cells (%.2f GiB; budget from %s), %s, max_model_len %d",
        plan.cells, settings.kv_cache_dtype, plan.budget_gib, plan.source, layout, plan.max_model_len,
    )  # fmt: skip
    if plan.host_cache_bytes:
        why = "--llamacpp-host-cache-memory" if settings.llamacpp_host_cache_memory is not None else (
            f"{HOST_CACHE_SHARE:.0%} of the memory left after weights and KV, at most "
            f"{HOST_CACHE_MAX_BYTES / 2**30:.0f} GiB")  # fmt: skip
        logger.info("llama.cpp host cache of finished conversations: %.1f GiB (%s)", plan.host_cache_bytes / 2**30,
                    why)  # fmt: skip
    core = build_llamacpp_engine(
        settings, path, tokenizer, plan.max_model_len, kv_cells=plan.cells, kv_unified=plan.unified,
        host_cache_bytes=plan.host_cache_bytes,
    )  # fmt: skip
    core.prepare_grammar()
    identity = model_identity(model_name, path, backend="llamacpp")
    persistence = None
    if settings.prefix_cache_dir is not None:
        persistence = _sequence_persistence(settings, core, identity, str(metadata.get("general.file_type", "?")))
        persistence.restore()
    serving = _serving(core, tokenizer, model_name, settings, started, identity, faults)
    serving.prefix_persistence = persistence
    return serving


def _serving(
    core: EngineCore,
    tokenizer: Tokenizer,
    model_name: str,
    settings: Settings,
    started: float,
    identity: str,
    faults: Faults | None = None,
) -> AsyncEngine:
    """The loaded core behind its asyncio front, with the load time logged."""
    logger.info("model loaded in %.1f s (max_model_len %d)", time.perf_counter() - started, core.max_model_len)
    if faults is not None:  # a demo model spec asked for injected faults (qwen3_api.demo_models.faults)
        from qwen3_api.demo_models.faults import FaultInjectingRunner

        runner = getattr(core, "runner", None)
        if runner is None:
            raise ModelLoadError("fault injection needs a backend with a model runner (torch or llamacpp)")
        logger.warning("injecting test faults into the model runner: %s", faults)
        core.runner = FaultInjectingRunner(runner, faults)  # type: ignore[attr-defined]
    return AsyncEngine(
        core, tokenizer, model_name, max_queued_requests=settings.max_queued_requests,
        request_timeout=settings.request_timeout or None, model_identity=identity,
    )  # fmt: skip


def load_engine(settings: Settings) -> AsyncEngine:
    """Resolve and load the model named by `settings`, returning an engine that is ready to start."""
    import torch

    from qwen3_api.models.gguf import is_gguf_spec

    started = time.perf_counter()
    model_name, faults = split_faults(canonical_model_name(settings.model))
    logger.info("resolving model %s", model_name)
    if is_gguf_spec(model_name):
        return _load_gguf_engine(settings, model_name, started, faults)
    model_dir = resolve_model(model_name)
    runtime = choose_runtime(settings)
    logger.info("runtime: %s (%s)", runtime, runtime.reason)
    tokenizer = Tokenizer(model_dir)
    if runtime.backend != "llamacpp" and settings.speculative != "off":
        raise ModelLoadError(
            f"--speculative {settings.speculative} runs on the llama.cpp backend only, not on {runtime.backend} "
            "(serve a GGUF, or a checkpoint with --backend llamacpp)"
        )
    if runtime.backend == "llamacpp":
        from qwen3_api.models.gguf_convert import convert_checkpoint

        # The checkpoint's own tokenizer and generation config stay in charge (NFC, end tokens, sampling defaults).
        path = convert_checkpoint(model_dir, runtime.quantize, settings.gguf_cache_dir)  # type: ignore[arg-type]
        return _serve_gguf(settings, path, tokenizer, model_name, started, faults)
    max_len = min(settings.max_model_len or model_max_len(model_dir), model_max_len(model_dir))
    device, dtype = torch.device(runtime.device), getattr(torch, runtime.dtype)
    logger.info("loading %s (%s on %s, backend %s)", model_dir, runtime.dtype, runtime.device, runtime.backend)
    identity = model_identity(
        model_name, model_dir, backend=runtime.backend, device=runtime.device, dtype=runtime.dtype,
        quantize=runtime.quantize,
    )
    persistence = None
    if runtime.backend == "reference":
        from qwen3_api.executors.reference import ReferenceCore

        _check_prefix_cache_dir(settings, "reference")
        core: EngineCore = ReferenceCore(model_dir, dtype, device, tokenizer.eos_token_ids, max_len)
    else:
        from qwen3_api.runtime.torch_engine import build_llm_engine

        engine = build_llm_engine(settings, model_dir, device, dtype, tokenizer, max_len, runtime.quantize)
        engine.prepare_grammar()
        core = engine
        if settings.prefix_cache_dir is not None:
            persistence = _prefix_persistence(settings, engine, identity, runtime)
            persistence.restore()
    serving = _serving(core, tokenizer, model_name, settings, started, identity, faults)
    serving.prefix_persistence = persistence
    return serving


def _check_prefix_cache_dir(settings: Settings, backend: str) -> None:
    if settings.prefix_cache_dir is not None:
        raise ModelLoadError(f"--prefix-cache-dir is supported on the torch and llamacpp backends, not on {backend}")


def _prefix_persistence(
    settings: Settings, engine: LLMEngine, identity: str, runtime: RuntimeChoice
) -> PrefixPersistence[Any]:
    """The on-disk prefix cache of `engine` (torch), for `--prefix-cache-dir`."""
    from qwen3_api.engine.prefix_store import PrefixCacheFormat, PrefixPersistence, PrefixStore, TorchPrefixCache

    _check_prefix_caching(settings)
    runner = engine.runner
    block_shape = runner.block_shape  # type: ignore[attr-defined]
    fmt = PrefixCacheFormat(identity, runtime.dtype, runtime.quantize, settings.block_size, tuple(block_shape))
    block_bytes = runner.kv_bytes_per_token(runner.config, runner.dtype)  # type: ignore[attr-defined]
    budget = int(settings.prefix_cache_dir_mb * 2**20)
    store = PrefixStore(settings.prefix_cache_dir, budget, fmt, block_bytes * settings.block_size)  # type: ignore[arg-type]
    logger.info("prefix cache directory %s: up to %d blocks (%g MiB), saved every %g s and at shutdown",
                settings.prefix_cache_dir, store.max_blocks, settings.prefix_cache_dir_mb,
                settings.prefix_cache_save_interval)  # fmt: skip
    return PrefixPersistence(TorchPrefixCache(engine, store), store, settings.prefix_cache_save_interval)


def _sequence_persistence(
    settings: Settings, engine: LLMEngine, identity: str, file_type: str
) -> PrefixPersistence[Any]:
    """The on-disk prefix cache of a llama.cpp `engine` (its retained sequences), for `--prefix-cache-dir`."""
    from qwen3_api.engine.prefix_store import PrefixPersistence
    from qwen3_api.engine.sequence_store import LlamaCppPrefixCache, SequenceCacheFormat, SequenceStore

    _check_prefix_caching(settings)
    runner = engine.runner
    fmt = SequenceCacheFormat(
        identity, settings.kv_cache_dtype, runner.kv_unified, runner.flash_attention,  # type: ignore[attr-defined]
        runner.n_ctx_seq, f"gguf file type {file_type}",  # type: ignore[attr-defined]
    )  # fmt: skip
    store = SequenceStore(settings.prefix_cache_dir, int(settings.prefix_cache_dir_mb * 2**20), fmt)  # type: ignore[arg-type]
    logger.info("prefix cache directory %s: retained llama.cpp sequences, up to %g MiB, saved every %g s and at "
                "shutdown", settings.prefix_cache_dir, settings.prefix_cache_dir_mb,
                settings.prefix_cache_save_interval)  # fmt: skip
    return PrefixPersistence(LlamaCppPrefixCache(runner, store), store, settings.prefix_cache_save_interval)  # type: ignore[arg-type]


def _check_prefix_caching(settings: Settings) -> None:
    if not settings.enable_prefix_caching:
        raise ModelLoadError("--prefix-cache-dir needs prefix caching: drop --no-enable-prefix-caching")
