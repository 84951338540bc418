"""Parses Hermes-style tool calls out of Qwen3 output, whole or streamed the way OpenAI streams them.

Qwen3 writes each call as `<tool_call>\\n{"name": "fn", "arguments": {...}}\\n</tool_call>`, possibly
several, possibly after some content text. Streaming sends a call's id and name as soon as the name is
complete, then the arguments object text as it arrives.

A call's `arguments` is the raw text of the "arguments" object exactly as the model wrote it, not
re-serialized, so a call's streamed fragments always concatenate to its final `arguments`. Only a block that
does not start with `{"name": ..., "arguments": {` (other key order, string arguments, no arguments) is
buffered until `</tool_call>` and then sent whole, its arguments re-serialized with `json.dumps`.

Whitespace around a call (before it, between calls, after the last) is only formatting and is dropped; all
other text outside blocks is content. A block whose name cannot be read is content once it closes.
Streaming cannot take back a call whose name already went out, so a block with a readable name but invalid
JSON later still streams as a call; `parse()` sees the whole output and turns every block that is not valid
JSON back into content text, as written.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from enum import Enum, auto

from qwen3_api.chat.reasoning import partial_tag_length

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"

# The start of a block as Qwen3 writes it, up to the "{" opening the arguments ([ \t\n\r] is JSON whitespace).
_HEADER = re.compile(
    r'[ \t\n\r]*\{[ \t\n\r]*"name"[ \t\n\r]*:[ \t\n\r]*("(?:[^"\\]|\\.)*")[ \t\n\r]*,'
    r'[ \t\n\r]*"arguments"[ \t\n\r]*:[ \t\n\r]*\{'
)


@dataclass(frozen=True)
class ToolCall:
    """One complete tool call; `arguments` is a JSON string, as OpenAI sends it."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolCallChunk:
    """A streamed piece of a call: the first carries id and name (arguments ""), later ones argument text."""

    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass(frozen=True)
class ToolCallDelta:
    """What became safe to emit after a `feed()`: content text and tool-call chunks."""

    content: str = ""
    tool_calls: list[ToolCallChunk] = field(default_factory=list)


def new_call_id() -> str:
    """A fresh OpenAI-style tool call id, `call_` and 24 hex digits."""
    return f"call_{uuid.uuid4().hex[:24]}"


class _Block(Enum):
    HEADER = auto()  # waiting for `{"name": "...", "arguments": {`, or for the close tag when it never comes
    ARGUMENTS = auto()  # streaming the arguments object; JSON nesting tracked to find where it ends
    TRAILER = auto()  # arguments done; skipping to the close tag


@dataclass
class _Call:
    """A call whose header went out, with what `parse()` needs to turn it back into content if invalid."""

    index: int
    id: str
    name: str
    content_offset: int  # content emitted before the block: where its raw text goes back in
    arguments: list[str] = field(default_factory=list)
    raw: str = ""  # the block as written, tags and the whitespace dropped around it included
    valid: bool = False


class ToolCallParser:
    """Streams tool calls and content out of one output's text, fed in arbitrary chunks.

    Held back between feeds is only what could still change meaning: a prefix of a tag, and whitespace that
    may turn out to sit right before a block. The concatenated deltas of `feed()` and `finish()` equal
    `parse()` of the whole text for every output whose blocks are valid JSON.
    """

    def __init__(self) -> None:
        self._text = ""  # outside text not yet emitted
        self._block: str | None = None  # text after the current `<tool_call>`, while inside a block
        self._state = _Block.HEADER
        self._scanned = 0  # how far into `_block` the arguments scan got
        self._depth = 0  # JSON nesting inside the arguments object
        self._in_string = False
        self._escaped = False
        self._gap = ""  # whitespace dropped before the current block, given back if the block is content
        self._after_call = False  # a call just closed: whitespace that follows it is dropped
        self._calls: list[_Call] = []
        self._content_length = 0
        self._out_content: list[str] = []
        self._out_chunks: list[ToolCallChunk] = []
        self._finished = False
        self.invalid_blocks = 0  # blocks given back as content because they are not a valid call

    def feed(self, delta: str) -> ToolCallDelta:
        """Take the next piece of output text; return what is now safe to emit."""
        if self._finished:
            raise RuntimeError("ToolCallParser.feed() called after finish()")
        if self._block is None:
            self._text += delta
        else:
            self._block += delta
        return self._advance(at_end=False)

    def finish(self) -> ToolCallDelta:
        """End of output: flush held text, and close a block the output ended inside."""
        if self._finished:
            raise RuntimeError("ToolCallParser.finish() called twice")
        self._finished = True
        return self._advance(at_end=True)

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        """Parse a whole output into (content, calls); blocks that are not valid JSON stay in content.

        Uses a fresh parser, so this parser's streaming state is untouched; `invalid_blocks` of this parser
        counts the blocks given back as content.
        """
        parser = ToolCallParser()
        first, last = parser.feed(text), parser.finish()
        self.invalid_blocks = parser.invalid_blocks + sum(not call.valid for call in parser._calls)
        content = first.content + last.content
        calls: list[ToolCall] = []
        for call in reversed(parser._calls):  # back to front, so earlier offsets stay right
            if call.valid:
                calls.append(ToolCall(call.id, call.name, "".join(call.arguments)))
            else:
                content = content[: call.content_offset] + call.raw + content[call.content_offset :]
        calls.reverse()
        return content, calls

    def _advance(self, at_end: bool) -> ToolCallDelta:
        self._out_content, self._out_chunks = [], []
        progressed = True
        while progressed:
            progressed = self._advance_text(at_end) if self._block is None else self._advance_block(at_end)
        return ToolCallDelta("".join(self._out_content), self._out_chunks)

    def _advance_text(self, at_end: bool) -> bool:
        """Emit outside text; return True when a block opened."""
        if self._after_call:
            stripped = self._text.lstrip()
            # Kept with the call's raw text, so that parse() gives it back if the call turns out invalid.
            self._calls[-1].raw += self._text[: len(self._text) - len(stripped)]
            self._text, self._after_call = stripped, not stripped
        start = self._text.find(TOOL_CALL_OPEN)
        if start >= 0:
            before = self._text[:start].rstrip()
            self._emit_content(before)
            self._gap = self._text[len(before) : start]
            self._block, self._text = self._text[start + len(TOOL_CALL_OPEN) :], ""
            self._state, self._scanned, self._depth = _Block.HEADER, 0, 0
            self._in_string = self._escaped = self._after_call = False
            return True
        if at_end:
            self._emit_content(self._text)
            self._text = ""
            return False
        keep = partial_tag_length(self._text, TOOL_CALL_OPEN)
        # Trailing whitespace is held too: if a block follows, it is dropped, not sent.
        ready = self._text[: len(self._text) - keep].rstrip()
        self._emit_content(ready)
        self._text = self._text[len(ready) :]
        return False

    def _advance_block(self, at_end: bool) -> bool:
        """Move through the current block; return True when it closed (or changed state and should go on)."""
        block = self._block or ""
        if self._state is _Block.HEADER:
            header = _HEADER.match(block)
            name = _decode_name(header.group(1)) if header else None
            if header and name is not None:
                self._open_call(name)
                self._state, self._scanned = _Block.ARGUMENTS, header.end() - 1
                return True
            close = block.find(TOOL_CALL_CLOSE)
            if close >= 0:
                self._close_unstreamed(close, closed=True)
                return True
            if at_end:
                self._close_unstreamed(len(block), closed=False)
            return at_end
        if self._state is _Block.ARGUMENTS:
            return self._advance_arguments(block, at_end)
        close = block.find(TOOL_CALL_CLOSE, self._scanned)
        if close >= 0:
            self._close_call(close, closed=True)
            return True
        if at_end:
            self._close_call(len(block), closed=False)
            return True
        self._scanned = max(self._scanned, len(block) - len(TOOL_CALL_CLOSE) + 1)
        return False

    def _advance_arguments(self, block: str, at_end: bool) -> bool:
        start = position = self._scanned
        close_at = -1
        while position < len(block):
            char = block[position]
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                if self._depth == 0:
                    position += 1
                    break
            elif char == "<" and _may_start_close_tag(block, position):
                # Outside any string a close tag ends the call even though the JSON is unfinished; a prefix of
                # one waits for more text. Inside strings `</tool_call>` is just argument text.
                if block.startswith(TOOL_CALL_CLOSE, position):
                    close_at = position
                break
            position += 1
        if at_end and close_at < 0 and self._depth > 0:
            position = len(block)  # truncated output: what was generated is the arguments
        self._emit_arguments(block[start:position])
        self._scanned = position
        if close_at >= 0:
            self._close_call(close_at, closed=True)
            return True
        if self._depth == 0:
            self._state = _Block.TRAILER
            return True
        if at_end:
            self._close_call(len(block), closed=False)
        return at_end

    def _open_call(self, name: str) -> None:
        call = _Call(len(self._calls), new_call_id(), name, self._content_length)
        self._calls.append(call)
        self._out_chunks.append(ToolCallChunk(call.index, call.id, call.name, ""))

    def _close_call(self, end: int, closed: bool) -> None:
        call, block = self._calls[-1], self._block or ""
        call.raw = self._gap + TOOL_CALL_OPEN + block[:end] + (TOOL_CALL_CLOSE if closed else "")
        call.valid = _is_json(block[:end]) and _is_json("".join(call.arguments))
        self._after_call = True
        self._leave_block(end + len(TOOL_CALL_CLOSE) if closed else end)

    def _close_unstreamed(self, end: int, closed: bool) -> None:
        """Close a block whose header never matched: send it whole as a call if it is one, else as content."""
        block = self._block or ""
        parsed = _call_from_json(block[:end])
        if parsed is None:
            self.invalid_blocks += 1
            self._emit_content(self._gap + TOOL_CALL_OPEN + block[:end] + (TOOL_CALL_CLOSE if closed else ""))
        else:
            name, arguments = parsed
            self._open_call(name)
            self._emit_arguments(arguments)
            self._calls[-1].valid = self._after_call = True
        self._leave_block(end + len(TOOL_CALL_CLOSE) if closed else end)

    def _leave_block(self, resume_at: int) -> None:
        self._text, self._block = (self._block or "")[resume_at:], None

    def _emit_content(self, text: str) -> None:
        if text:
            self._out_content.append(text)
            self._content_length += len(text)

    def _emit_arguments(self, text: str) -> None:
        if not text:
            return
        call = self._calls[-1]
        call.arguments.append(text)
        last = self._out_chunks[-1] if self._out_chunks else None
        if last is not None and last.index == call.index and last.id is None:
            # One chunk per call per delta: merge fragments scanned in the same feed.
            self._out_chunks[-1] = ToolCallChunk(call.index, None, None, last.arguments + text)
        else:
            self._out_chunks.append(ToolCallChunk(call.index, None, None, text))


def _may_start_close_tag(text: str, position: int) -> bool:
    """Whether the text at `position` is `</tool_call>` or, at the end of `text`, a prefix of it."""
    return TOOL_CALL_CLOSE.startswith(text[position : position + len(TOOL_CALL_CLOSE)])


def _decode_name(literal: str) -> str | None:
    try:
        name = json.loads(literal)
    except ValueError:  # e.g. a raw control character inside the string
        return None
    return name if isinstance(name, str) and name else None


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _call_from_json(text: str) -> tuple[str, str] | None:
    """(name, arguments JSON) of a block that is a JSON object with a string name, else None."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        return None
    arguments = value.get("arguments", {})
    # A model may send arguments already encoded as a JSON string; OpenAI's field is that string.
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return value["name"], arguments
