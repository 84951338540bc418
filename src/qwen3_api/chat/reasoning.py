"""Splits Qwen3 output into reasoning (the `<think>` block) and content, for whole outputs or streamed deltas.

Qwen3 writes `<think>\\n...\\n</think>\\n\\n` and then the answer. The split is presented the way Qwen's own
parsers and our chat template present it (the template re-renders reasoning as `reasoning.strip('\\n')`):
reasoning without surrounding newlines, content without leading newlines, and an empty think block reported as
no reasoning at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def partial_tag_length(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag` (may still become the tag)."""
    for length in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


def prompt_opens_reasoning(prompt: str) -> bool:
    """Whether a rendered prompt ends inside an opened think block, so the output starts in reasoning.

    Thinking-only Qwen3 templates end the generation prompt with `<think>\\n`; checking the end (not the last
    tag anywhere) keeps a user message that merely mentions `<think>` from counting.
    """
    return prompt.rstrip().endswith(THINK_OPEN)


@dataclass(frozen=True)
class ReasoningDelta:
    """Text that became safe to emit after a `feed()`: the reasoning part and the content part."""

    reasoning: str = ""
    content: str = ""


class _State(Enum):
    OPENING = auto()  # only whitespace so far, or a prefix of `<think>`: undecided
    REASONING = auto()
    CONTENT = auto()


class ReasoningParser:
    """Splits one output's text, fed in arbitrary chunks, into reasoning and content.

    Held back between feeds is only what could still change meaning: a prefix of a tag, newlines that may
    turn out to sit right before `</think>`, leading whitespace before a possible `<think>`. The concatenated
    deltas of `feed()` and `finish()` equal `split()` of the whole text.
    """

    def __init__(self, starts_in_reasoning: bool = False) -> None:
        # True when the prompt itself opened `<think>` (see `prompt_opens_reasoning`): the output then holds
        # only `</think>`. A leading `<think>` is still accepted and dropped in that mode.
        self.starts_in_reasoning = starts_in_reasoning
        self._state = _State.OPENING
        self._pending = ""  # received text not yet emitted
        self._reasoning_started = False  # leading newlines are stripped until some reasoning text goes out
        self._content_started = False
        self._finished = False

    def feed(self, delta: str) -> ReasoningDelta:
        """Take the next piece of output text; return what is now safe to emit."""
        if self._finished:
            raise RuntimeError("ReasoningParser.feed() called after finish()")
        self._pending += delta
        return self._advance(at_end=False)

    def finish(self) -> ReasoningDelta:
        """End of output: flush held text. Output truncated inside the think block is all reasoning."""
        if self._finished:
            raise RuntimeError("ReasoningParser.finish() called twice")
        self._finished = True
        return self._advance(at_end=True)

    def split(self, text: str) -> tuple[str | None, str]:
        """Split a whole output into (reasoning or None when there was none, content).

        Uses a fresh parser with this one's configuration, so this parser's streaming state is untouched.
        """
        parser = ReasoningParser(self.starts_in_reasoning)
        first, last = parser.feed(text), parser.finish()
        reasoning = first.reasoning + last.reasoning
        return reasoning or None, first.content + last.content

    def _advance(self, at_end: bool) -> ReasoningDelta:
        # States only move forward (OPENING -> REASONING -> CONTENT), so one pass in order handles any delta.
        if self._state is _State.OPENING:
            self._leave_opening(at_end)
        reasoning = self._take_reasoning(at_end) if self._state is _State.REASONING else ""
        content = self._take_content() if self._state is _State.CONTENT else ""
        return ReasoningDelta(reasoning, content)

    def _leave_opening(self, at_end: bool) -> None:
        stripped = self._pending.lstrip()
        if stripped.startswith(THINK_OPEN):
            self._pending = stripped[len(THINK_OPEN) :]
            self._state = _State.REASONING
        elif at_end or (stripped and not THINK_OPEN.startswith(stripped)):
            self._state = _State.REASONING if self.starts_in_reasoning else _State.CONTENT

    def _take_reasoning(self, at_end: bool) -> str:
        end = self._pending.find(THINK_CLOSE)
        if end >= 0:
            text = self._pending[:end].rstrip("\n")
            self._pending = self._pending[end + len(THINK_CLOSE) :]
            self._state = _State.CONTENT
        elif at_end:
            text, self._pending = self._pending.rstrip("\n"), ""
        else:
            keep = partial_tag_length(self._pending, THINK_CLOSE)
            # Trailing newlines are held too: if `</think>` follows they are dropped, not sent.
            text = self._pending[: len(self._pending) - keep].rstrip("\n")
            self._pending = self._pending[len(text) :]
        if not self._reasoning_started:
            text = text.lstrip("\n")
            self._reasoning_started = bool(text)
        return text

    def _take_content(self) -> str:
        text, self._pending = self._pending, ""
        if not self._content_started:
            text = text.lstrip("\n")
            self._content_started = bool(text)
        return text
