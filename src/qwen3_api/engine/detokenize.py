"""Incremental detokenization with stop strings: turns streamed token ids into text that is safe to send.

Two things are held back until more tokens arrive: a trailing partial UTF-8 character (byte-level BPE tokens
can end mid-character, and the tokenizer then decodes the tail as U+FFFD), and a trailing piece of text that
could be the start of a stop string. Decoding looks only at a small window of recent tokens (the
prefix-offset / read-offset technique), so each call costs O(new tokens) however long the output grows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

REPLACEMENT_CHAR = "\ufffd"
# Prompt tokens decoded as context before the first output token, so merges and leading spaces come out as
# they would in the full text.
PROMPT_CONTEXT_TOKENS = 5


class Tokenizer(Protocol):
    """The one tokenizer method this module needs (any Hugging Face tokenizer has it)."""

    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


@dataclass(frozen=True)
class DetokenizedDelta:
    """Text that became safe to emit after an `add()`, and the stop string that ended the output, if any."""

    text: str
    stop_string: str | None = None
    # How many of the added tokens the output keeps: all of them, unless a stop string ended it at an earlier one.
    num_tokens: int = 0


class IncrementalDetokenizer:
    """Detokenizes one sequence's output as it is generated, holding back partial characters and stop strings.

    The concatenated deltas plus `flush()` equal `tokenizer.decode(output_ids, skip_special_tokens=...)`, cut
    right before the first stop string (the one that completes first) when one occurs. Once a stop string has
    matched, later tokens are ignored.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_token_ids: list[int],
        skip_special_tokens: bool = True,
        stop: tuple[str, ...] = (),
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._stop = tuple(s for s in stop if s)
        self._longest_stop = max((len(s) for s in self._stop), default=0)
        context = list(prompt_token_ids[-PROMPT_CONTEXT_TOKENS:])
        if context and self._decode(context).endswith(REPLACEMENT_CHAR):
            # The prompt ends inside a character; gluing output bytes onto it would change the text that
            # decoding the output alone gives, so decode the output on its own.
            context = []
        self._token_ids = context  # a window: tokens before `_prefix_offset` are dropped as they age out
        self._prefix_offset = 0  # window start: tokens decoded only as context
        self._read_offset = len(context)  # tokens before this are already turned into text
        self._pending = ""  # decoded text held back because it may begin a stop string
        self._emitted: list[str] = []
        self._stop_string: str | None = None
        self._flushed = False

    @property
    def output_text(self) -> str:
        """All text emitted so far."""
        return "".join(self._emitted)

    @property
    def stop_string(self) -> str | None:
        """The stop string that ended the output, or None."""
        return self._stop_string

    def add(self, token_ids: list[int]) -> DetokenizedDelta:
        """Take newly generated tokens; return the text that is now safe to emit. Several tokens at once (one step
        of speculative decoding) are taken one at a time, so a stop string ends the output at the token that
        completes it, as it would one token per step: `num_tokens` says how many of them the output keeps."""
        if self._stop_string is not None or self._flushed:
            return DetokenizedDelta("")
        texts = []
        for i, token_id in enumerate(token_ids):
            delta = self._emit(self._decode_next(token_id), final=False)
            texts.append(delta.text)
            if delta.stop_string is not None:
                return DetokenizedDelta("".join(texts), delta.stop_string, i + 1)
        return DetokenizedDelta("".join(texts), None, len(token_ids))

    def flush(self) -> str:
        """At the end of generation, release the text still held back (a partial character as U+FFFD)."""
        if self._stop_string is not None or self._flushed:
            return ""
        tail = ""
        if self._read_offset < len(self._token_ids):
            tail = self._decode_window()[len(self._decode_prefix()) :]
        delta = self._emit(tail, final=True)
        self._flushed = True
        return delta.text

    def _decode(self, token_ids: list[int]) -> str:
        return self._tokenizer.decode(token_ids, skip_special_tokens=self._skip_special_tokens)

    def _decode_prefix(self) -> str:
        return self._decode(self._token_ids[self._prefix_offset : self._read_offset])

    def _decode_window(self) -> str:
        return self._decode(self._token_ids[self._prefix_offset :])

    def _decode_next(self, token_id: int) -> str:
        """Append one token; return the new text it completes ("" while the tail is a partial character)."""
        self._token_ids.append(token_id)
        prefix_text = self._decode_prefix()
        window_text = self._decode_window()
        if window_text.endswith(REPLACEMENT_CHAR):
            return ""  # a character still incomplete: wait for its remaining bytes
        if len(window_text) <= len(prefix_text):
            # The token decodes to nothing here (a skipped special token). Byte-level BPE tokens carry their own
            # bytes, so such a token adds no context either: drop it, and a run of them keeps the window (and so
            # each decode) as small as before instead of growing by one token per step.
            del self._token_ids[-1]
            return ""
        # The read offset only moves where the text ends on a whole character, so the window's text always
        # starts with the prefix's text and the difference is exactly the new characters.
        new_text = window_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._token_ids)
        del self._token_ids[: self._prefix_offset]
        self._read_offset -= self._prefix_offset
        self._prefix_offset = 0
        return new_text

    def _emit(self, new_text: str, final: bool) -> DetokenizedDelta:
        """Move text from pending to emitted, stopping at a stop string and holding back a possible one."""
        text = self._pending + new_text
        match = self._find_stop(text)
        if match is not None:
            start, stop_string = match
            self._stop_string = stop_string
            self._pending = ""
            return self._record(text[:start], stop_string)
        held = 0 if final else self._stop_prefix_length(text)
        self._pending = text[len(text) - held :]
        return self._record(text[: len(text) - held], None)

    def _record(self, text: str, stop_string: str | None) -> DetokenizedDelta:
        if text:
            self._emitted.append(text)
        return DetokenizedDelta(text, stop_string)

    def _find_stop(self, text: str) -> tuple[int, str] | None:
        """The stop string in `text` that completes first (ties: the one starting first) and where it starts.

        Choosing by end keeps the result the same however the text was split across `add()` calls.
        """
        best: tuple[int, int, str] | None = None  # (end, start, stop)
        for stop_string in self._stop:
            start = text.find(stop_string)
            if start >= 0:
                candidate = (start + len(stop_string), start, stop_string)
                if best is None or candidate[:2] < best[:2]:
                    best = candidate
        return None if best is None else (best[1], best[2])

    def _stop_prefix_length(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        for length in range(min(len(text), self._longest_stop - 1), 0, -1):
            suffix = text[-length:]
            if any(stop_string.startswith(suffix) for stop_string in self._stop):
                return length
        return 0
