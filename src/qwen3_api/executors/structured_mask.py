"""The torch side of structured output: apply each row's grammar mask to the batch's logits, in place.

`apply_structured_masks` is the engine's `LogitsMasker` (wired by runtime.assembly): the engine calls it right
before the sampler, then `matcher.accept(token)` for each sampled token. The masks of all grammar rows are
computed together (in parallel, without the GIL) into one packed int32 buffer on the CPU; only that buffer
(~19 KB a row) travels to the logits' device.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence

import torch

from qwen3_api.engine.structured import GrammarMatcher, fill_bitmasks


@functools.cache
def _byte_bias(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[256, 8]: row b holds 0 for each set bit of byte b (least significant first) and -inf for each clear one."""
    bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
    return torch.zeros(256, 8, dtype=dtype).masked_fill_(bits == 0, float("-inf")).to(device)


def mask_bias(bitmask: torch.Tensor, vocab_size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[G, W] int32 packed masks (bit t % 32 of word t // 32 allows token t) -> [G, vocab_size] of 0 / -inf.

    One lookup per byte, then the caller adds the result: on the CPU a lookup table plus `add_` is several
    times faster than shifting each int32 by 0..31 and `masked_fill_` (~0.7 ms against ~2.5 ms for 8 rows).
    """
    if sys.byteorder != "little":
        raise RuntimeError("packed token masks are read byte by byte, which assumes a little-endian machine")
    as_bytes = bitmask.view(torch.uint8).flatten().to(torch.int32)
    bias = torch.index_select(_byte_bias(bitmask.device, dtype), 0, as_bytes)  # (G * W * 4, 8)
    return bias.view(bitmask.shape[0], -1)[:, :vocab_size]


def compute_bitmask(matchers: Sequence[GrammarMatcher]) -> torch.Tensor:
    """The packed masks of `matchers`, one row each: [len(matchers), W] int32 on the CPU."""
    words = matchers[0].mask_words
    if any(m.mask_words != words for m in matchers):
        raise ValueError("all matchers of a batch must share one vocabulary size")
    bitmask = torch.empty((len(matchers), words), dtype=torch.int32)
    fill_bitmasks([(m, row) for row, m in enumerate(matchers)], bitmask.data_ptr(), 4 * words, len(matchers))
    return bitmask


def apply_structured_masks(logits: torch.Tensor, matchers: Sequence[GrammarMatcher | None]) -> None:
    """Set to -inf, in place, the logits [B, V] of every token that row's grammar forbids next.

    `matchers[i]` is row i's matcher, or None for a row without structured output (left untouched).
    """
    if logits.dim() != 2 or logits.shape[0] != len(matchers):
        raise ValueError(f"logits {tuple(logits.shape)} do not match {len(matchers)} matchers")
    rows = [i for i, m in enumerate(matchers) if m is not None]
    if not rows:
        return
    grammar_matchers = [m for m in matchers if m is not None]
    vocab_size = logits.shape[1]
    if any(m.vocab_size != vocab_size for m in grammar_matchers):
        raise ValueError(f"the grammar's vocabulary does not match the logits' width {vocab_size}")
    bitmask = compute_bitmask(grammar_matchers).to(logits.device, non_blocking=True)
    bias = mask_bias(bitmask, vocab_size, logits.dtype)  # (G, V): 0 where allowed, -inf where forbidden
    # Adding -inf is exact, and logits are finite, so no NaN appears (+inf + -inf would).
    if len(rows) == len(matchers):
        logits.add_(bias)
    else:
        logits.index_add_(0, torch.tensor(rows, device=logits.device), bias)
