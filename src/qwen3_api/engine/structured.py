"""Structured output: JSON object, JSON schema and forced tool calls, enforced by llguidance token masks.

llguidance was chosen over xgrammar by measurement with the real Qwen3 tokenizer (see the commit message):
grammar compiles ~10x faster (a request's schema is compiled before its first token), unsupported schema
keywords are rejected instead of silently ignored (so a request gets a 400, not output that breaks its
schema), per-token masks are tens of microseconds for both, and it installs as one 3 MB wheel.

Nothing here imports torch: a matcher writes its packed mask to a memory address, and the torch side
(`qwen3_api.executors.structured_mask`) owns the tensors.

JSON is generated without free whitespace (", " and ": " separators, one line): with flexible whitespace a
model can emit newlines forever while staying inside the grammar.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import llguidance
import llguidance.hf

from qwen3_api.errors import InvalidRequestError

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

logger = logging.getLogger(__name__)

StructuredKind = Literal["json_object", "json_schema", "tool_calls"]
_KINDS = ("json_object", "json_schema", "tool_calls")

# Qwen3's tool-call markers; llguidance's Lark `<name>` syntax matches them only as their single tokens.
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"

# Applied last (over any "x-guidance" in the user's schema), so every grammar has the same JSON layout.
_JSON_LAYOUT: JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}

# OpenAI: a function without `parameters` takes an empty parameter list.
_NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}

DEFAULT_CACHE_SIZE = 256


def _load_json(text: object, what: str, param: str) -> Any:
    if not isinstance(text, str):
        raise InvalidRequestError(f"{what} must be JSON text, got {type(text).__name__}", param)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidRequestError(f"{what} is not valid JSON: {exc}", param) from exc


def _json_schema_grammar(schema: dict[str, Any]) -> str:
    return str(llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=_JSON_LAYOUT))


def _parse_tools(tools_text: object) -> list[tuple[str, dict[str, Any]]]:
    """(name, parameters schema) of each function definition, validated."""
    tools = _load_json(tools_text, "tools", "tools")
    if not isinstance(tools, list) or not tools:
        raise InvalidRequestError("tools must be a non-empty list of function definitions", "tools")
    functions: list[tuple[str, dict[str, Any]]] = []
    for index, tool in enumerate(tools):
        name = tool.get("name") if isinstance(tool, dict) else None
        if not isinstance(name, str) or not name:
            raise InvalidRequestError(f"tools[{index}] needs a non-empty string 'name'", "tools")
        parameters = tool.get("parameters")
        if parameters is None:
            parameters = _NO_PARAMETERS
        if not isinstance(parameters, dict):
            raise InvalidRequestError(
                f"tools[{index}] ({name}): 'parameters' must be a JSON schema object", "tools"
            )
        if any(name == seen for seen, _ in functions):
            raise InvalidRequestError(f"tools: the function name {name!r} appears twice", "tools")
        functions.append((name, parameters))
    return functions


def _tool_calls_grammar(functions: Sequence[tuple[str, dict[str, Any]]], allow_multiple: bool) -> str:
    """A Lark grammar for `<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>` blocks, joined by "\\n"."""
    rules = [
        'start: tool_call ("\\n" tool_call)*' if allow_multiple else "start: tool_call",
        f'tool_call: {TOOL_CALL_OPEN} "\\n" call "\\n" {TOOL_CALL_CLOSE}',
        "call: " + " | ".join(f"call_{i}" for i in range(len(functions))),
    ]
    for i, (name, parameters) in enumerate(functions):
        call_schema = {
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
            "x-guidance": _JSON_LAYOUT,
        }
        # %json takes the schema inline; json.dumps keeps it on one line, as a Lark rule must be.
        rules.append(f"call_{i}: %json {json.dumps(call_schema)}")
    return "\n".join(rules) + "\n"


def _check_grammar(grammar: str, param: str) -> None:
    """Raise InvalidRequestError for what llguidance rejects (bad schema, unimplemented keyword)."""
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise InvalidRequestError(f"unsupported or invalid JSON schema: {'; '.join(messages)}", param)


@dataclass(frozen=True)
class StructuredOutput:
    """What the output must be: any JSON object, JSON matching `schema`, or `<tool_call>` blocks for `tools`.

    `schema` is the JSON text of a JSON schema (json_schema only); `tools` is the JSON text of a list of
    `{"name", "parameters"}` function definitions (tool_calls only); `allow_multiple` permits several calls.
    """

    kind: StructuredKind
    schema: str | None = None
    tools: str | None = None
    allow_multiple: bool = False
    # The llguidance grammar, built once here so that validation and compilation share it.
    grammar: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        param = "tools" if self.kind == "tool_calls" else "response_format"
        if self.kind not in _KINDS:
            raise InvalidRequestError(
                f"structured output kind must be one of {_KINDS}, got {self.kind!r}", param
            )
        if not isinstance(self.allow_multiple, bool):
            raise InvalidRequestError("allow_multiple must be a boolean", param)
        if self.schema is not None and self.kind != "json_schema":
            raise InvalidRequestError(f"a schema is only used with json_schema, not {self.kind}", param)
        if self.tools is not None and self.kind != "tool_calls":
            raise InvalidRequestError(f"tools are only used with tool_calls, not {self.kind}", param)
        if self.allow_multiple and self.kind != "tool_calls":
            raise InvalidRequestError("allow_multiple is only used with tool_calls", param)
        if self.kind == "json_object":
            grammar = _json_schema_grammar({"type": "object"})
        elif self.kind == "json_schema":
            if self.schema is None:
                raise InvalidRequestError("json_schema needs a schema", param)
            schema = _load_json(self.schema, "the JSON schema", param)
            if not isinstance(schema, dict):
                raise InvalidRequestError("the JSON schema must be a JSON object", param)
            grammar = _json_schema_grammar(schema)
        else:
            grammar = _tool_calls_grammar(_parse_tools(self.tools), self.allow_multiple)
        _check_grammar(grammar, param)
        object.__setattr__(self, "grammar", grammar)


@dataclass(frozen=True)
class CompiledGrammar:
    """A grammar compiled against the tokenizer; each request's matcher is a cheap copy of `_template`."""

    spec: StructuredOutput
    _template: llguidance.LLMatcher = field(repr=False, compare=False)


class GrammarMatcher:
    """One request's position in its grammar: which tokens may come next; advanced by each sampled token."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int, eos_token_ids: frozenset[int]) -> None:
        self._matcher = matcher
        self.vocab_size = vocab_size
        self._eos_token_ids = eos_token_ids
        self._terminated = False

    @property
    def mask_words(self) -> int:
        """Number of 32-bit words in one packed mask: bit `t % 32` of word `t // 32` allows token t."""
        return (self.vocab_size + 31) // 32

    def fill_bitmask(self, address: int, num_bytes: int) -> None:
        """Write the packed mask of allowed next tokens to `num_bytes` (= 4 * mask_words) bytes at `address`.

        Once the JSON (or the last tool call) is complete, or after a rejected token, only end tokens are set.
        """
        self._matcher.unsafe_compute_mask_ptr(address, num_bytes)

    def accept(self, token_id: int) -> bool:
        """Advance by the sampled token; False (and the matcher stays in error) if the grammar forbids it."""
        if self._terminated:
            return False
        accepted = bool(self._matcher.consume_token(token_id))
        if not accepted:
            logger.warning("structured output rejected token %d: %s", token_id, self._matcher.get_error())
        elif token_id in self._eos_token_ids:
            self._terminated = True
        return accepted

    @property
    def is_terminated(self) -> bool:
        """True once an end token was accepted: the output is complete and valid."""
        return self._terminated

    @property
    def is_error(self) -> bool:
        """True after a rejected token; from then on only end tokens are allowed."""
        return bool(self._matcher.is_error())

    @property
    def error(self) -> str:
        """Why the matcher is in error, or ""."""
        return str(self._matcher.get_error())


class GrammarCompiler:
    """Compiles StructuredOutput specs against one tokenizer, keeping the most recent ones in an LRU cache.

    `hf_tokenizer` is an HF fast tokenizer, or an `llguidance.LLTokenizer` already built (a GGUF model's, over
    llama.cpp's vocabulary)."""

    def __init__(
        self,
        hf_tokenizer: Any,
        vocab_size: int,
        eos_token_ids: Sequence[int],
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        prebuilt = isinstance(hf_tokenizer, llguidance.LLTokenizer)  # e.g. over llama.cpp's vocabulary
        known = hf_tokenizer.vocab_size if prebuilt else len(hf_tokenizer)
        if vocab_size < known:
            raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer's {known} tokens")
        if not eos_token_ids:
            raise ValueError("at least one end token id is needed: a finished grammar allows only end tokens")
        self.vocab_size = vocab_size
        self.eos_token_ids = frozenset(eos_token_ids)
        # ~3 s for Qwen3's 151k tokens: built once per engine. Ids from len(tokenizer) to vocab_size are
        # padding rows of the model; llguidance never allows them.
        self._tokenizer = hf_tokenizer if prebuilt else llguidance.hf.from_tokenizer(
            hf_tokenizer, n_vocab=vocab_size, eos_token=list(eos_token_ids)
        )
        self._compile_cached = functools.lru_cache(maxsize=cache_size)(self._compile)

    def compile(self, spec: StructuredOutput) -> CompiledGrammar:
        """The compiled grammar for `spec`; the same spec twice is a cache hit."""
        return self._compile_cached(spec)

    def cache_info(self) -> functools._CacheInfo:
        """Hits, misses and size of the compile cache."""
        return self._compile_cached.cache_info()

    def matcher(self, compiled: CompiledGrammar) -> GrammarMatcher:
        """A fresh matcher for one request, at the start of the grammar."""
        return GrammarMatcher(compiled._template.deep_copy(), self.vocab_size, self.eos_token_ids)

    def _compile(self, spec: StructuredOutput) -> CompiledGrammar:
        # log_level 0: llguidance would print errors to stderr; ours go through `logging` instead.
        template = llguidance.LLMatcher(self._tokenizer, spec.grammar, log_level=0)
        if template.is_error():
            param = "tools" if spec.kind == "tool_calls" else "response_format"
            raise InvalidRequestError(f"unsupported or invalid JSON schema: {template.get_error()}", param)
        return CompiledGrammar(spec, template)


@functools.cache
def _executor() -> llguidance.LLExecutor:
    """The thread pool that computes a batch's masks in parallel (created on first use, then shared)."""
    return llguidance.LLExecutor()


def fill_bitmasks(
    rows: Sequence[tuple[GrammarMatcher, int]], address: int, row_bytes: int, num_rows: int
) -> None:
    """Write each matcher's packed mask into its row of a C-contiguous [num_rows, row_bytes] buffer at `address`.

    The masks are computed in parallel, without the GIL.
    """
    if rows:
        _executor().unsafe_compute_mask_ptr(
            [(m._matcher, row) for m, row in rows], address, row_bytes, num_rows
        )
