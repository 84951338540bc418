"""Build a ready `AsyncEngine` from settings: resolve the model, pick device/dtype/backend, load weights."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from qwen3_api.config import Settings
from qwen3_api.engine.async_engine import AsyncEngine
from qwen3_api.engine.core import EngineCore
from qwen3_api.engine.tokenizer import Tokenizer
from qwen3_api.errors import ModelLoadError
from qwen3_api.models.source import canonical_model_name, resolve_model

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


def gguf_max_model_len(settings: Settings, metadata: dict[str, object]) -> int:
    """Context per sequence on llama.cpp: each of max_num_seqs sequences owns its cells, all within the KV budget."""
    arch = str(metadata.get("general.architecture", "qwen3"))
    context = int(metadata.get(f"{arch}.context_length", 32768))  # type: ignore[call-overload]
    layers = int(metadata.get(f"{arch}.block_count", 1))  # type: ignore[call-overload]
    kv_heads = int(metadata.get(f"{arch}.attention.head_count_kv", 1))  # type: ignore[call-overload]
    head_dim = int(metadata.get(f"{arch}.attention.key_length", 128))  # type: ignore[call-overload]
    bytes_per_token = 2 * layers * kv_heads * head_dim * 2  # K and V, float16 cells
    budget = settings.kv_cache_memory if settings.kv_cache_memory is not None else 1.0
    per_sequence = int(budget * 2**30 // bytes_per_token) // settings.max_num_seqs
    wanted = min(settings.max_model_len or context, context)
    if per_sequence < wanted:
        logger.warning(
            "KV budget %.2f GiB over %d sequences holds %d tokens each: max_model_len lowered from %d",
            budget, settings.max_num_seqs, per_sequence, wanted,
        )  # fmt: skip
    if per_sequence < 64:
        raise ModelLoadError(f"--kv-cache-memory {budget} GiB is too small for {settings.max_num_seqs} sequences")
    return min(wanted, per_sequence)


def _load_gguf_engine(settings: Settings, model_name: str, started: float) -> AsyncEngine:
    from qwen3_api.models.gguf import resolve_gguf

    path = resolve_gguf(model_name)
    runtime = choose_runtime(llamacpp_settings(settings), gguf=True)
    logger.info("runtime: %s (%s)", runtime, runtime.reason)
    return _serve_gguf(settings, path, None, model_name, started)


def _serve_gguf(
    settings: Settings, path: Path, tokenizer: Tokenizer | None, model_name: str, started: float
) -> AsyncEngine:
    """Serve the GGUF file `path` on llama.cpp; `tokenizer` None takes the file's own (llama.cpp's vocabulary)."""
    from qwen3_api.executors.llamacpp_runner import build_llamacpp_engine
    from qwen3_api.models.gguf import read_gguf_metadata

    settings = llamacpp_settings(settings)
    metadata = read_gguf_metadata(path)
    tokenizer = tokenizer or Tokenizer.from_gguf(path, metadata)
    core = build_llamacpp_engine(settings, path, tokenizer, gguf_max_model_len(settings, metadata))
    core.prepare_grammar()
    return _serving(core, tokenizer, model_name, settings, started)


def _serving(
    core: EngineCore, tokenizer: Tokenizer, model_name: str, settings: Settings, started: float
) -> AsyncEngine:
    """The loaded core behind its asyncio front, with the load time logged."""
    logger.info("model loaded in %.1f s (max_model_len %d)", time.perf_counter() - started, core.max_model_len)
    return AsyncEngine(core, tokenizer, model_name, max_queued_requests=settings.max_queued_requests)


def load_engine(settings: Settings) -> AsyncEngine:
    """Resolve and load the model named by `settings`, returning an engine that is ready to start."""
    import torch

    from qwen3_api.models.gguf import is_gguf_spec

    started = time.perf_counter()
    model_name = canonical_model_name(settings.model)
    logger.info("resolving model %s", model_name)
    if is_gguf_spec(model_name):
        return _load_gguf_engine(settings, model_name, started)
    model_dir = resolve_model(model_name)
    runtime = choose_runtime(settings)
    logger.info("runtime: %s (%s)", runtime, runtime.reason)
    tokenizer = Tokenizer(model_dir)
    if runtime.backend == "llamacpp":
        from qwen3_api.models.gguf_convert import convert_checkpoint

        # The checkpoint's own tokenizer and generation config stay in charge (NFC, end tokens, sampling defaults).
        path = convert_checkpoint(model_dir, runtime.quantize, settings.gguf_cache_dir)  # type: ignore[arg-type]
        return _serve_gguf(settings, path, tokenizer, model_name, started)
    max_len = min(settings.max_model_len or model_max_len(model_dir), model_max_len(model_dir))
    device, dtype = torch.device(runtime.device), getattr(torch, runtime.dtype)
    logger.info("loading %s (%s on %s, backend %s)", model_dir, runtime.dtype, runtime.device, runtime.backend)
    if runtime.backend == "reference":
        from qwen3_api.executors.reference import ReferenceCore

        core: EngineCore = ReferenceCore(model_dir, dtype, device, tokenizer.eos_token_ids, max_len)
    else:
        from qwen3_api.engine.llm_engine import build_llm_engine

        engine = build_llm_engine(settings, model_dir, device, dtype, tokenizer, max_len, runtime.quantize)
        engine.prepare_grammar()
        core = engine
    return _serving(core, tokenizer, model_name, settings, started)
