"""The memory-bandwidth limit of decoding: every weight is read once per step, so
tokens/s per sequence <= bandwidth / bytes of weights read per token."""

from __future__ import annotations

import time
from typing import Any


def weight_bytes_per_token(config: dict[str, Any], dtype_bytes: int) -> int:
    """Bytes of weights one decode step reads for a Qwen3 config: all layers, the final norm, the LM head
    (the whole vocab x hidden matrix, tied or not) and one embedding row. The KV cache is left out: at short
    contexts it is a small fraction of the weights."""
    hidden, inter = int(config["hidden_size"]), int(config["intermediate_size"])
    heads, kv_heads = int(config["num_attention_heads"]), int(config["num_key_value_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    layers, vocab = int(config["num_hidden_layers"]), int(config["vocab_size"])
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2  # q, o; k, v
    per_layer = attention + 3 * hidden * inter + 2 * hidden + 2 * head_dim  # + MLP, layer norms, q/k norms
    return (layers * per_layer + vocab * hidden + 2 * hidden) * dtype_bytes


def measure_read_bandwidth(
    num_bytes: int = 512 * 1024**2, repeats: int = 5, num_threads: int | None = None
) -> float:
    """Memory read bandwidth in GB/s (10^9 bytes): the best of `repeats` sums over a float32 tensor far larger
    than the caches, which is how a decode step streams its weights."""
    import torch

    if num_threads is not None:
        torch.set_num_threads(num_threads)
    data = torch.ones(num_bytes // 4, dtype=torch.float32)
    data.sum()  # page the tensor in before timing
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    del data
    return num_bytes / best / 1e9
