"""Attention over a paged KV cache in plain torch (CPU and CUDA alike).

Cache layout: one tensor `[num_layers, 2, num_blocks, block_size, Hkv, D]`; index 0 of dim 1 is K, 1 is V.
A token at absolute position `pos` of a sequence lives in slot `block_table[pos // block_size] * block_size
+ pos % block_size` of the flattened `[num_blocks * block_size, Hkv, D]` view of its layer's K and V.

One step's batch is flat: T new tokens from several sequences. Each layer first writes the new K/V into
their slots, then attends:
  * decodes (entries with one new token) are batched: their blocks are gathered into a padded
    `[B, Hkv, L, D]` tensor and one masked `scaled_dot_product_attention` call serves them all;
  * prefill chunks (several new tokens) run one sequence at a time, attending causally over the cached
    prefix plus the chunk; a chunk starting at position 0 uses its own K/V directly, no gather.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def kv_cache_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """Bytes of K plus V that one token occupies across all layers."""
    return 2 * num_layers * num_kv_heads * head_dim * torch.empty(0, dtype=dtype).element_size()


class PagedKVCache:
    """The K/V storage for all layers, one tensor `[num_layers, 2, num_blocks, block_size, Hkv, D]`."""

    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(f"num_blocks and block_size must be positive, got {num_blocks} and {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        # zeros, not empty: padded slots are masked out, but NaN garbage times a zero weight is still NaN
        self.data = torch.zeros(
            num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim, dtype=dtype, device=device
        )

    def layer(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, V) of one layer, each `[num_blocks, block_size, Hkv, D]` (views, writes go to the cache)."""
        return self.data[layer_idx, 0], self.data[layer_idx, 1]


@dataclass(frozen=True)
class PrefillSpan:
    """One multi-token entry: batch rows [query_start, query_end), continuing after `start_position`."""

    query_start: int
    query_end: int
    start_position: int
    block_ids: torch.Tensor  # [nb] blocks covering positions 0..start_position + n - 1
    mask: torch.Tensor | None  # [n, context_len] bool, True = may attend; None when start_position == 0


@dataclass(frozen=True)
class PagedAttentionMetadata:
    """Everything attention needs about a step's batch, built once and shared by all layers."""

    slot_mapping: torch.Tensor  # [T] flat cache slot of every new token
    decode_rows: torch.Tensor | None  # [B] rows of the batch that are single-token entries (None: no decodes)
    decode_block_tables: torch.Tensor | None  # [B, max_blocks], padded with block 0 (masked out)
    decode_mask: torch.Tensor | None  # [B, 1, 1, max_blocks * block_size] bool, True = may attend
    decode_rows_are_all_rows: bool  # the batch is decodes only, in row order: no scatter needed
    prefills: tuple[PrefillSpan, ...]
    num_tokens: int

    @classmethod
    def build(
        cls,
        query_lens: list[int],
        start_positions: list[int],
        block_tables: list[list[int]],
        block_size: int,
        device: torch.device | str,
    ) -> PagedAttentionMetadata:
        """Describe a batch of entries (new-token count, tokens already cached, block table) in order."""
        slots: list[int] = []
        decode_rows: list[int] = []
        decode_tables: list[list[int]] = []
        decode_lens: list[int] = []
        prefill_specs: list[tuple[int, int, int, list[int]]] = []
        row = 0
        for n, start, table in zip(query_lens, start_positions, block_tables, strict=True):
            end = start + n
            for pos in range(start, end):
                slots.append(table[pos // block_size] * block_size + pos % block_size)
            used_blocks = table[: (end + block_size - 1) // block_size]
            if n == 1:
                decode_rows.append(row)
                decode_tables.append(used_blocks)
                decode_lens.append(end)
            else:
                prefill_specs.append((row, row + n, start, used_blocks))
            row += n

        def to_device(values: list[int] | list[list[int]]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long).to(device, non_blocking=True)

        decode_rows_t = decode_table_t = decode_mask = None
        if decode_rows:
            max_blocks = max(len(t) for t in decode_tables)
            padded = [t + [0] * (max_blocks - len(t)) for t in decode_tables]
            decode_rows_t, decode_table_t = to_device(decode_rows), to_device(padded)
            key_pos = torch.arange(max_blocks * block_size, device=device)
            decode_mask = (key_pos[None, :] < to_device(decode_lens)[:, None])[:, None, None, :]

        prefills = []
        for q_start, q_end, start, blocks in prefill_specs:
            mask = None
            if start > 0:
                key_pos = torch.arange(start + q_end - q_start, device=device)
                query_pos = torch.arange(start, start + q_end - q_start, device=device)
                mask = key_pos[None, :] <= query_pos[:, None]  # causal, offset by the cached prefix
            prefills.append(PrefillSpan(q_start, q_end, start, to_device(blocks), mask))

        return cls(
            slot_mapping=to_device(slots),
            decode_rows=decode_rows_t,
            decode_block_tables=decode_table_t,
            decode_mask=decode_mask,
            decode_rows_are_all_rows=len(decode_rows) == row,
            prefills=tuple(prefills),
            num_tokens=row,
        )


class PagedAttention:
    """An `AttentionBackend` for one step: writes the step's K/V into the cache, then attends."""

    def __init__(self, cache: PagedKVCache, metadata: PagedAttentionMetadata) -> None:
        self.cache = cache
        self.metadata = metadata

    def __call__(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: [T, Hq, D], k/v: [T, Hkv, D] -> [T, Hq, D]."""
        meta = self.metadata
        k_cache, v_cache = self.cache.layer(layer_idx)  # [num_blocks, block_size, Hkv, D] each
        num_kv_heads, head_dim = k.shape[1], k.shape[2]
        k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, k)
        v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, v)

        decode_out = None
        if meta.decode_rows is not None:
            decode_out = self._decode(q, k_cache, v_cache)
            if meta.decode_rows_are_all_rows:
                return decode_out
        out = torch.empty_like(q)
        if decode_out is not None:
            out[meta.decode_rows] = decode_out
        for span in meta.prefills:
            out[span.query_start : span.query_end] = self._prefill(span, q, k, v, k_cache, v_cache)
        return out

    def _decode(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        """All single-token entries at once -> [B, Hq, D]."""
        meta = self.metadata
        tables = meta.decode_block_tables  # [B, nb]
        if tables is None:
            raise RuntimeError("decode attention called for a batch without decode rows")
        batch, num_blocks = tables.shape
        block_size, num_kv_heads, head_dim = k_cache.shape[1:]
        context = num_blocks * block_size
        keys = k_cache[tables].view(batch, context, num_kv_heads, head_dim).transpose(1, 2)  # [B, Hkv, L, D]
        values = v_cache[tables].view(batch, context, num_kv_heads, head_dim).transpose(1, 2)
        # GQA without repeating K/V: the G query heads sharing a KV head act as G query rows of that head.
        group = q.shape[1] // num_kv_heads
        queries = q if meta.decode_rows_are_all_rows else q[meta.decode_rows]  # [B, Hq, D]
        queries = queries.view(batch, num_kv_heads, group, head_dim)  # [B, Hkv, G, D]
        out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=meta.decode_mask)
        return out.reshape(batch, num_kv_heads * group, head_dim)

    def _prefill(
        self,
        span: PrefillSpan,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
    ) -> torch.Tensor:
        """One multi-token chunk of one sequence -> [n, Hq, D]."""
        queries = q[span.query_start : span.query_end].transpose(0, 1)[None]  # [1, Hq, n, D]
        if span.mask is None:
            # Nothing cached before this chunk: its own K/V are the whole context, and plain causal applies.
            keys = k[span.query_start : span.query_end]
            values = v[span.query_start : span.query_end]
        else:
            context = span.mask.shape[1]
            head_shape = k_cache.shape[2:]
            keys = k_cache[span.block_ids].view(-1, *head_shape)[:context]  # [context, Hkv, D]
            values = v_cache[span.block_ids].view(-1, *head_shape)[:context]
        out = F.scaled_dot_product_attention(
            queries,
            keys.transpose(0, 1)[None],
            values.transpose(0, 1)[None],
            attn_mask=span.mask,
            is_causal=span.mask is None,
            enable_gqa=True,
        )  # [1, Hq, n, D]
        return out[0].transpose(0, 1)
