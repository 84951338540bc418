"""Run one engine step on the device: a flat batch of prefill chunks and decodes, one forward pass."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import torch

from qwen3_api.engine.protocols import BatchEntry
from qwen3_api.executors.attention import (
    PagedAttention,
    PagedAttentionMetadata,
    PagedKVCache,
    kv_cache_bytes_per_token,
)
from qwen3_api.executors.batch_checks import check_positions
from qwen3_api.models.qwen3 import Qwen3ForCausalLM, Qwen3ModelConfig
from qwen3_api.models.weights import load_model, resolve_dtype

logger = logging.getLogger(__name__)


class TorchModelRunner:
    """Owns the model and its paged KV cache; `forward` executes a batch and returns next-token logits."""

    def __init__(
        self,
        model: Qwen3ForCausalLM | str | Path,
        *,
        dtype: torch.dtype | str = torch.float32,
        device: torch.device | str = "cpu",
        num_blocks: int,
        block_size: int = 16,
    ) -> None:
        self.dtype = resolve_dtype(dtype)
        self.device = torch.device(device)
        if isinstance(model, Qwen3ForCausalLM):
            self.model = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        else:
            self.model = load_model(model, dtype=self.dtype, device=self.device)
        self.config: Qwen3ModelConfig = self.model.config
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.kv_cache = PagedKVCache(
            num_layers=self.config.num_hidden_layers,
            num_blocks=num_blocks,
            block_size=block_size,
            num_kv_heads=self.config.num_key_value_heads,
            head_dim=self.config.head_dim,
            dtype=self.dtype,
            device=self.device,
        )
        logger.info(
            "KV cache: %d blocks x %d tokens, %.2f GiB (%s on %s)",
            num_blocks, block_size, self.kv_cache.data.numel() * self.kv_cache.data.element_size() / 2**30,
            self.dtype, self.device,
        )

    @staticmethod
    def kv_bytes_per_token(config: Qwen3ModelConfig, dtype: torch.dtype | str) -> int:
        """KV cache bytes one token needs across all layers, to size `num_blocks` from a memory budget."""
        return kv_cache_bytes_per_token(
            config.num_hidden_layers, config.num_key_value_heads, config.head_dim, resolve_dtype(dtype)
        )

    @staticmethod
    def num_blocks_for_budget(
        config: Qwen3ModelConfig, dtype: torch.dtype | str, block_size: int, budget_gib: float
    ) -> int:
        """How many blocks of `block_size` tokens fit in `budget_gib` GiB of KV cache."""
        block_bytes = TorchModelRunner.kv_bytes_per_token(config, dtype) * block_size
        return int(budget_gib * 2**30) // block_bytes

    def release(self, request_ids: Iterable[str]) -> None:
        """Nothing to forget: a sequence's KV lives in blocks the scheduler owns."""

    def stats(self) -> dict[str, float]:
        """No caches of its own: the scheduler's blocks are its KV."""
        return {}

    def read_blocks(self, block_ids: list[int]) -> torch.Tensor:
        """A CPU copy of these blocks' K/V, `[num_layers, 2, len(block_ids), block_size, Hkv, D]`."""
        index = torch.tensor(block_ids, dtype=torch.long, device=self.device)
        return self.kv_cache.data.index_select(2, index).cpu()

    def write_blocks(self, block_ids: list[int], kv: torch.Tensor) -> None:
        """Overwrite these blocks' K/V with `kv`, shaped as `read_blocks` returns it."""
        index = torch.tensor(block_ids, dtype=torch.long, device=self.device)
        self.kv_cache.data.index_copy_(2, index, kv.to(self.device, self.dtype))

    @property
    def block_shape(self) -> tuple[int, ...]:
        """The K/V shape of one block across all layers, with the block dimension left out."""
        layers, two, _, block_size, heads, head_dim = self.kv_cache.data.shape
        return (layers, two, block_size, heads, head_dim)

    def forward(self, batch: list[BatchEntry]) -> torch.Tensor:
        """Compute the batch's new tokens, store their K/V, and return float32 logits
        [entries with need_logits, vocab] for the last new token of each such entry, in batch order."""
        if not batch:
            return torch.empty(0, self.config.vocab_size, dtype=torch.float32, device=self.device)
        self._check_batch(batch)
        token_ids: list[int] = []
        positions: list[int] = []
        logit_rows: list[int] = []
        for entry in batch:
            token_ids.extend(entry.token_ids)
            positions.extend(range(entry.start_position, entry.start_position + len(entry.token_ids)))
            if entry.need_logits:
                logit_rows.append(len(token_ids) - 1)
        metadata = PagedAttentionMetadata.build(
            query_lens=[len(e.token_ids) for e in batch],
            start_positions=[e.start_position for e in batch],
            block_tables=[e.block_table for e in batch],
            block_size=self.block_size,
            device=self.device,
        )
        with torch.inference_mode():
            input_ids = torch.tensor(token_ids, dtype=torch.long).to(self.device, non_blocking=True)  # [T]
            position_t = torch.tensor(positions, dtype=torch.long).to(self.device, non_blocking=True)  # [T]
            hidden = self.model(input_ids, position_t, PagedAttention(self.kv_cache, metadata))  # [T, H]
            if len(logit_rows) != len(token_ids):  # skip the gather when every row needs logits (all decodes)
                hidden = hidden[torch.tensor(logit_rows, dtype=torch.long).to(self.device)]
            return self.model.compute_logits(hidden)  # [N, V] float32

    def _check_batch(self, batch: list[BatchEntry]) -> None:
        """Reject malformed entries here: a bad slot would silently corrupt another sequence's cache."""
        limit = self.config.max_position_embeddings
        check_positions(batch, limit, f"max_position_embeddings {limit}")
        for i, entry in enumerate(batch):
            if entry.num_draft_tokens:
                raise ValueError("speculative decoding (draft tokens) runs on the llama.cpp backend only")
            end = entry.start_position + len(entry.token_ids)
            needed = (end + self.block_size - 1) // self.block_size
            table = entry.block_table
            if len(table) < needed:
                raise ValueError(
                    f"batch entry {i} covers {end} positions but its block table has {len(table)} "
                    f"blocks of {self.block_size}; it needs {needed}"
                )
            if min(table[:needed]) < 0 or max(table[:needed]) >= self.num_blocks:
                raise ValueError(f"batch entry {i} has a block id outside [0, {self.num_blocks})")
