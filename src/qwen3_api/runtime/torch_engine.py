"""Our engine on our torch model: load the weights, size the paged KV cache, wire the runner."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from qwen3_api.config import Settings
from qwen3_api.engine.llm_engine import LLMEngine
from qwen3_api.engine.tokenizer import Tokenizer
from qwen3_api.errors import ModelLoadError
from qwen3_api.executors.model_runner import TorchModelRunner
from qwen3_api.models.quantization import quantize_model
from qwen3_api.models.weights import load_model
from qwen3_api.runtime.assembly import assemble_engine

logger = logging.getLogger(__name__)

CPU_DEFAULT_KV_GIB = 1.0


def kv_cache_budget_gib(settings: Settings, device: torch.device) -> float:
    """The KV cache budget: explicit GiB, else a share of free GPU memory (after the weights), else 1 GiB on CPU."""
    if settings.kv_cache_memory is not None:
        return settings.kv_cache_memory
    if device.type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info(device)
        return settings.kv_cache_fraction * free_bytes / 2**30
    return CPU_DEFAULT_KV_GIB


def build_llm_engine(
    settings: Settings,
    model_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
    tokenizer: Tokenizer,
    max_model_len: int,
    quantize: str = "none",
) -> LLMEngine:
    """Load the model, size the KV cache from `--kv-cache-memory`, and wire scheduler, runner and sampler."""
    # Qwen3 checkpoints are bfloat16: loading them so is exact and halves the float peak before quantizing.
    load_dtype = torch.bfloat16 if quantize != "none" and dtype == torch.float32 else dtype
    model = quantize_model(load_model(model_dir, dtype=load_dtype, device=device), quantize)  # type: ignore[arg-type]
    if device.type == "cuda":
        torch.cuda.empty_cache()  # give the freed float weights back before sizing the KV cache from free memory
    block_size = settings.block_size
    budget = kv_cache_budget_gib(settings, device)
    num_blocks = TorchModelRunner.num_blocks_for_budget(model.config, dtype, block_size, budget)
    capacity = num_blocks * block_size
    if capacity < max_model_len:
        if capacity < block_size * 2:
            raise ModelLoadError(
                f"a KV cache of {budget:.2f} GiB holds only {capacity} tokens; raise --kv-cache-memory"
            )
        logger.warning(
            "the KV cache holds %d tokens, fewer than the context length %d: max_model_len lowered to %d",
            capacity, max_model_len, capacity,
        )  # fmt: skip
        max_model_len = capacity
    logger.info(
        "KV cache budget %.2f GiB = %d blocks of %d tokens = %d tokens", budget, num_blocks,
        block_size, capacity,
    )  # fmt: skip
    runner = TorchModelRunner(model, dtype=dtype, device=device, num_blocks=num_blocks, block_size=block_size)
    return assemble_engine(
        settings, runner, tokenizer, num_blocks, max_model_len, model.config.vocab_size, sampler_device=device
    )
