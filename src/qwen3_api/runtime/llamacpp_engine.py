"""Our engine on llama.cpp: a GGUF file computed by `LlamaCppModelRunner`, our scheduler and sampler on top."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from qwen3_api.config import Settings
from qwen3_api.engine.llm_engine import LLMEngine
from qwen3_api.engine.sequence import Sequence
from qwen3_api.engine.speculative import Speculator, speculative_config
from qwen3_api.engine.tokenizer import Tokenizer
from qwen3_api.executors.llamacpp_options import (
    flash_attention_for,
    host_cache_bytes_for,
    kv_unified_for,
    retained_sequences_for,
)
from qwen3_api.executors.llamacpp_runner import LlamaCppModelRunner
from qwen3_api.runtime.assembly import assemble_engine

logger = logging.getLogger(__name__)


def build_llamacpp_engine(
    settings: Settings,
    gguf_path: Path,
    tokenizer: Tokenizer,
    max_model_len: int,
    *,
    n_threads: int | None = None,
    kv_cache_type: str | None = None,
    kv_cells: int | None = None,
    kv_unified: bool | None = None,
    host_cache_bytes: int | None = None,
) -> LLMEngine:
    """Our engine (scheduler, sampler, structured output) on a llama.cpp runner for a GGUF file.

    `kv_cells` is the KV budget in cells (default: every sequence at full length); it sizes the shared pool.
    `kv_unified`: the layout as the KV plan resolved it; None resolves it here (`kv_unified_for`).
    `host_cache_bytes`: host memory for finished sequences' states, as the plan sized it; None takes
    `--llamacpp-host-cache-memory` (off when unset).
    """
    # torch only samples here. Its OpenMP threads and llama.cpp's (a second OpenMP runtime) spin-wait for work;
    # on few cores they starve each other: measured 3 vs 271 tok/s on the tiny model, 2 cores, in the server.
    torch.set_num_threads(1)
    max_num_seqs = settings.max_num_seqs
    step_tokens = max(settings.max_num_batched_tokens, max_num_seqs)
    unified = kv_unified_for(settings, kv_cells, max_model_len) if kv_unified is None else kv_unified
    if host_cache_bytes is None:  # no memory figure here: only an explicit size turns it on
        host_cache_bytes = host_cache_bytes_for(settings, free_bytes=0)
    runner = LlamaCppModelRunner(
        gguf_path, max_num_seqs=max_num_seqs, max_model_len=max_model_len,
        n_threads=n_threads or settings.llamacpp_threads, n_threads_batch=settings.llamacpp_threads_batch,
        n_batch=step_tokens, n_ubatch=settings.llamacpp_ubatch,
        kv_cache_type=kv_cache_type or settings.kv_cache_dtype, flash_attention=flash_attention_for(settings),
        reuse_prefixes=settings.enable_prefix_caching, min_reuse_tokens=settings.block_size,
        min_copy_tokens=max(64, settings.block_size), weight_repack=settings.llamacpp_weight_repack,
        kv_unified=unified, kv_cells=kv_cells, retained_sequences=retained_sequences_for(settings, max_num_seqs),
        host_cache_bytes=host_cache_bytes,
        max_draft_tokens=settings.num_speculative_tokens if settings.speculative == "ngram" else 0,
    )  # fmt: skip
    if max_model_len > runner.n_ctx_train:
        logger.warning("max_model_len %d is past the model's training context %d", max_model_len, runner.n_ctx_train)
    block_size = settings.block_size
    if unified:
        # One pool: the scheduler's blocks are its cells (rounded down), so it admits and preempts by what really
        # fits; a block holds at least as many tokens as the cells it stands for, so llama.cpp never runs short.
        num_blocks = runner.n_ctx // block_size
        max_model_len = min(max_model_len, num_blocks * block_size)
    else:
        # Every running sequence owns max_model_len cells in llama.cpp, so blocks must never be the binding limit:
        # the scheduler then never preempts.
        num_blocks = max_num_seqs * math.ceil(max_model_len / block_size)

    def prefix_source(seq: Sequence) -> int:
        return runner.lookup_prefix(seq.request_id, seq.all_token_ids)

    engine = assemble_engine(
        settings, runner, tokenizer, num_blocks, max_model_len, runner.vocab_size, prefix_source
    )
    if settings.speculative == "ngram":
        engine.speculator = Speculator(speculative_config(settings), tokenizer.eos_token_ids)
        logger.info(
            "speculative decoding: prompt-lookup drafts of up to %d tokens (n-grams %d..%d), while at most %d "
            "sequences decode", settings.num_speculative_tokens, settings.ngram_min, settings.ngram_max,
            settings.speculative_max_batch,
        )  # fmt: skip
    return engine
