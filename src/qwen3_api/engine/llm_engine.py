"""Our engine core: the scheduler decides each step's batch, the model runner computes it, the sampler picks tokens.

    out = scheduler.schedule(); logits = runner.forward(batch_of(out)); tokens = sampler.sample(...);
    scheduler.update(out, tokens)
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from qwen3_api.config import Settings
from qwen3_api.engine.kv_cache import KVCacheManager
from qwen3_api.engine.outputs import CoreOutput, FinishReason
from qwen3_api.engine.sampling import SamplingParams
from qwen3_api.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from qwen3_api.engine.sequence import Sequence
from qwen3_api.executors.model_runner import BatchEntry, TorchModelRunner
from qwen3_api.executors.sampler import Sampler, SamplingRow
from qwen3_api.models.weights import load_model

logger = logging.getLogger(__name__)


class LLMEngine:
    """EngineCore with continuous batching over a paged KV cache (see `EngineCore` for the contract)."""

    def __init__(self, scheduler: Scheduler, runner: TorchModelRunner, sampler: Sampler) -> None:
        self.scheduler = scheduler
        self.runner = runner
        self.sampler = sampler
        self.max_model_len = scheduler.config.max_model_len
        self._arrivals = 0
        self.num_steps = 0

    def add_request(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, prefix_group: str | None = None
    ) -> None:
        self._arrivals += 1
        seq = Sequence(request_id, list(prompt_token_ids), params, self._arrivals, prefix_group)
        self.scheduler.add(seq)

    def abort_request(self, request_id: str) -> None:
        if self.scheduler.abort(request_id) is not None:
            self.sampler.release([request_id])

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    def stats(self) -> dict[str, float]:
        kv = self.scheduler.kv_stats
        return {
            "waiting": float(self.scheduler.num_waiting),
            "running": float(self.scheduler.num_running),
            "kv_usage": kv.usage,
            "prefix_hit_rate": kv.prefix_hit_rate,
            "prefix_queried_tokens": float(kv.prefix_queried_tokens),
            "prefix_hit_tokens": float(kv.prefix_hit_tokens),
            "preemptions": float(self.scheduler.num_preemptions),
        }

    def shutdown(self) -> None:
        """Nothing to join: the runner and sampler hold only memory."""

    def step(self) -> list[CoreOutput]:
        out = self.scheduler.schedule()
        self.sampler.release(out.finished_request_ids)
        if not out.chunks:
            return []
        self.num_steps += 1
        logits = self.runner.forward(self._batch(out))  # [sampling chunks, V]
        sampling = [chunk.seq for chunk in out.chunks if chunk.samples]
        rows = [SamplingRow(s.request_id, s.params, s.prompt_token_ids, s.output_token_ids) for s in sampling]
        picked = self.sampler.sample(logits, rows)
        finished = self.scheduler.update(out, {s.request_id: p.token_id for s, p in zip(sampling, picked, strict=True)})
        finished_ids = {s.request_id for s in finished}
        if finished_ids:
            self.sampler.release(finished_ids)
        outputs = []
        for seq, pick in zip(sampling, picked, strict=True):
            done = seq.request_id in finished_ids
            outputs.append(
                CoreOutput(
                    request_id=seq.request_id,
                    new_token_ids=[pick.token_id],
                    new_logprobs=[pick.logprob] if pick.logprob is not None else None,
                    finish_reason=seq.finish_reason if done else None,
                    num_prompt_tokens=seq.num_prompt_tokens,
                    num_cached_tokens=seq.num_cached_tokens,
                    stop_token_id=pick.token_id if done and seq.finish_reason is FinishReason.STOP else None,
                )
            )
        return outputs

    @staticmethod
    def _batch(out: SchedulerOutput) -> list[BatchEntry]:
        entries = []
        for chunk in out.chunks:
            seq, start = chunk.seq, chunk.start_position
            token_ids = [seq.token_id_at(i) for i in range(start, start + chunk.num_new_tokens)]
            entries.append(BatchEntry(token_ids, start, list(seq.block_table), chunk.samples))
        return entries


def build_llm_engine(
    settings: Settings,
    model_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
    eos_token_ids: tuple[int, ...],
    max_model_len: int,
) -> LLMEngine:
    """Load the model, size the KV cache from `--kv-cache-memory`, and wire scheduler, runner and sampler."""
    model = load_model(model_dir, dtype=dtype, device=device)
    block_size = settings.block_size
    num_blocks = TorchModelRunner.num_blocks_for_budget(model.config, dtype, block_size, settings.kv_cache_memory)
    capacity = num_blocks * block_size
    if capacity < max_model_len:
        if capacity < block_size * 2:
            from qwen3_api.errors import ModelLoadError

            raise ModelLoadError(
                f"--kv-cache-memory {settings.kv_cache_memory} GiB holds only {capacity} tokens; give it more"
            )
        logger.warning(
            "the KV cache holds %d tokens, fewer than the context length %d: max_model_len lowered to %d",
            capacity, max_model_len, capacity,
        )  # fmt: skip
        max_model_len = capacity
    logger.info(
        "KV cache budget %.2f GiB = %d blocks of %d tokens = %d tokens", settings.kv_cache_memory, num_blocks,
        block_size, capacity,
    )  # fmt: skip
    runner = TorchModelRunner(model, dtype=dtype, device=device, num_blocks=num_blocks, block_size=block_size)
    config = SchedulerConfig(
        max_num_seqs=settings.max_num_seqs,
        max_num_batched_tokens=max(settings.max_num_batched_tokens, settings.max_num_seqs),
        block_size=block_size,
        max_model_len=max_model_len,
        eos_token_ids=eos_token_ids,
    )
    kv = KVCacheManager(num_blocks, block_size, enable_prefix_caching=settings.enable_prefix_caching)
    return LLMEngine(Scheduler(config, kv), runner, Sampler())
