"""Wire a model runner to our engine: scheduler, KV block accounting, sampler and structured output."""

from __future__ import annotations

from collections.abc import Callable

import torch

from qwen3_api.config import Settings
from qwen3_api.engine.kv_cache import KVCacheManager
from qwen3_api.engine.llm_engine import LLMEngine
from qwen3_api.engine.protocols import ModelRunner
from qwen3_api.engine.scheduler import Scheduler, SchedulerConfig
from qwen3_api.engine.sequence import Sequence
from qwen3_api.engine.structured import GrammarCompiler
from qwen3_api.engine.tokenizer import Tokenizer
from qwen3_api.executors.sampler import Sampler
from qwen3_api.executors.structured_mask import apply_structured_masks


def assemble_engine(
    settings: Settings,
    runner: ModelRunner,
    tokenizer: Tokenizer,
    num_blocks: int,
    max_model_len: int,
    vocab_size: int,
    prefix_source: Callable[[Sequence], int] | None = None,
    sampler_device: torch.device | str = "cpu",
) -> LLMEngine:
    """Wire a model runner to the scheduler, KV block accounting, sampler and structured output.

    Prefix reuse follows `--enable-prefix-caching`: by hashed blocks, or through `prefix_source` for a runner
    that keeps its own cache.
    """
    config = SchedulerConfig(
        max_num_seqs=settings.max_num_seqs,
        max_num_batched_tokens=max(settings.max_num_batched_tokens, settings.max_num_seqs),
        block_size=settings.block_size,
        max_model_len=max_model_len,
        eos_token_ids=tokenizer.eos_token_ids,
    )
    reuse = settings.enable_prefix_caching
    kv = KVCacheManager(
        num_blocks,
        settings.block_size,
        enable_prefix_caching=reuse and prefix_source is None,
        prefix_source=prefix_source if reuse else None,
    )

    def grammar_compiler() -> GrammarCompiler:
        return GrammarCompiler(tokenizer.grammar_tokenizer(vocab_size), vocab_size, tokenizer.eos_token_ids)

    return LLMEngine(
        Scheduler(config, kv), runner, Sampler(device=sampler_device), grammar_compiler, apply_structured_masks
    )
