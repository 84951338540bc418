"""Benchmark prompts of an exact (with a tokenizer) or approximate (without) token length.

Prompts are random sequences of common English words, each written with a leading space. With a byte-level BPE
tokenizer such as Qwen3's, a word that encodes to one token alone still does so inside the sequence (the
pre-tokenizer splits at spaces), so the token count is exact, and word boundaries are token boundaries: a prefix
of k words is a prefix of k tokens, which the prefix-cache benchmark relies on.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

# Common words that are single tokens in GPT-2-style vocabularies (filtered again against the real tokenizer).
_WORD_TEXT = """
the of and to in is was for on that with as by at from his her they this had not are but be have one all
were we when there can an which their said if do will each about how up out them then she many some so these
would other into has more two like him see time could no make than first been its who now people my made over
did down only way find use may water long little very after words called just where most know get through back
much go good new write our me man too any day same right look think also around another came come work three
word must because does part even place well such here take why things help put years different away again off
went old number great tell men say small every found still between name should home big give air line set own
under read last never us left end along while might next sound below saw something thought both few those always
looked show large often together asked house world going want school important until form food keep children feet
land side without boy once animals life enough took sometimes four head above kind began almost live page got earth
need far hand high year mother light parts country father let night following picture being study second eyes
soon times story boys since white days ever paper hard near sentence better best across during today others sure
means knew its try told young miles sun ways thing whole hear example heard several change answer room sea against
top turned learn point city play toward five using himself usually money seen car morning ship river voice table
"""

Encode = Callable[[str], Sequence[int]]


def single_token_words(encode: Encode | None) -> list[str]:
    """The word list (with leading spaces) narrowed to words that are exactly one token under `encode`."""
    words = sorted({" " + w for w in _WORD_TEXT.split()})
    if encode is None:
        return words
    single = [w for w in words if len(encode(w)) == 1]
    if len(single) < 50:
        raise ValueError("this tokenizer splits too many common words; cannot build exact-length prompts")
    return single


class PromptBuilder:
    """Makes seeded random prompts of a given token length; exact when a tokenizer is given."""

    def __init__(self, encode: Encode | None = None) -> None:
        self._encode = encode
        self._words = single_token_words(encode)

    @classmethod
    def from_tokenizer_dir(cls, tokenizer_dir: str | Path | None) -> PromptBuilder:
        """A builder using the HF tokenizer in `tokenizer_dir`, or an approximate one when it is None."""
        if tokenizer_dir is None:
            return cls(None)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        return cls(lambda text: tokenizer.encode(text, add_special_tokens=False))

    @property
    def exact(self) -> bool:
        """Whether prompt lengths are exact token counts (a tokenizer was given)."""
        return self._encode is not None

    def words(self, num_tokens: int, seed: int) -> list[str]:
        """`num_tokens` random single-token words, the same for the same seed."""
        if num_tokens < 1:
            raise ValueError("a prompt needs at least one token")
        rng = random.Random(seed)
        return [rng.choice(self._words) for _ in range(num_tokens)]

    def prompt(self, num_tokens: int, seed: int) -> str:
        """A prompt of `num_tokens` tokens (about that many without a tokenizer)."""
        return "".join(self.words(num_tokens, seed))

    def shared_prefix_pair(self, num_tokens: int, shared_fraction: float, seed: int) -> tuple[str, str]:
        """Two prompts of `num_tokens` tokens whose first `shared_fraction` of tokens are equal and tails differ."""
        first = self.words(num_tokens, seed)
        shared = int(num_tokens * shared_fraction)
        tail = self.words(num_tokens - shared, seed + 1_000_003) if num_tokens > shared else []
        # A tail that starts with the same word would lengthen the shared prefix: make the first tail word differ.
        if tail and tail[0] == first[shared]:
            tail[0] = next(w for w in self._words if w != first[shared])
        return "".join(first), "".join(first[:shared] + tail)

    def count_tokens(self, text: str) -> int | None:
        """Tokens in `text`, or None without a tokenizer."""
        return len(self._encode(text)) if self._encode is not None else None
