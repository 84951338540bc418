"""Prompt-lookup drafts: guess a sequence's next tokens by finding its latest n-gram earlier in its own context.

When the output copies from the prompt (edit this code, quote this text) or repeats itself, the tokens that
followed the last occurrence of the current suffix are a good guess for what comes next. Pure Python + numpy.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


class NgramProposer:
    """Proposes up to `num_tokens` drafts: the tokens that followed the most recent earlier occurrence of the
    context's longest suffix of `ngram_max` down to `ngram_min` tokens."""

    def __init__(self, num_tokens: int, ngram_min: int, ngram_max: int) -> None:
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        if not 1 <= ngram_min <= ngram_max:
            raise ValueError(f"need 1 <= ngram_min <= ngram_max, got {ngram_min}..{ngram_max}")
        self.num_tokens = num_tokens
        self.ngram_min = ngram_min
        self.ngram_max = ngram_max

    def propose(
        self, token_ids: Sequence[int], max_tokens: int | None = None, stop_token_ids: Collection[int] = ()
    ) -> list[int]:
        """Drafts to follow `token_ids` (prompt + output so far), at most `max_tokens` of them (default
        `num_tokens`); cut before the first of `stop_token_ids`, since a draft that ends the sequence gains
        nothing. Empty when no suffix of `ngram_min`+ tokens occurred earlier."""
        limit = self.num_tokens if max_tokens is None else min(max_tokens, self.num_tokens)
        if limit <= 0 or len(token_ids) <= self.ngram_min:
            return []
        context = np.asarray(token_ids, dtype=np.int64)
        for n in range(min(self.ngram_max, len(context) - 1), self.ngram_min - 1, -1):
            suffix = context[-n:]
            # Windows starting at 0 .. len-n-1: each has at least one token after it, and the suffix itself
            # (starting at len-n) is not among them.
            windows = sliding_window_view(context[:-1], n)
            starts = np.flatnonzero((windows == suffix).all(axis=1))
            if starts.size == 0:
                continue
            follow = int(starts[-1]) + n
            drafts = context[follow : follow + limit].tolist()
            for i, token in enumerate(drafts):
                if token in stop_token_ids:
                    return drafts[:i]
            return drafts
        return []
