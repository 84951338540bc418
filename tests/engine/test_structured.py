"""Structured output with the real Qwen3 tokenizer: whatever the model's logits, the output parses and validates.

The "model" here is random logits, fresh every step. Sampling them at temperature 1 under the grammar's mask
is a random walk through the grammar; inside a JSON string almost every token is allowed, so an unbiased walk
would rarely close its strings within the step cap. The trick: a fixed bias of CLOSE_BIAS on the tokens made
only of `"`, `}` and `]` (about even odds against the ~147k other tokens whenever they are allowed). The
mask alone decides what is legal; the bias only shortens the walks, so the outputs stay random and varied.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator

import jsonschema
import pytest
import torch
import transformers

from qwen3_api.chat.tools import ToolCallParser
from qwen3_api.demo_models.checkpoints import END_TOKEN_IDS, VOCAB_SIZE, cached_test_model
from qwen3_api.engine.structured import GrammarCompiler, GrammarMatcher, StructuredOutput
from qwen3_api.errors import InvalidRequestError
from qwen3_api.executors.structured_mask import apply_structured_masks

TOKENIZER_SIZE = 151669  # ids from here to VOCAB_SIZE are padding rows of the model
TOOL_CALL_OPEN_ID = 151657
MAX_STEPS = 400
CLOSE_BIAS = 9.0

SCHEMAS: dict[str, dict[str, object]] = {
    "nested": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "address": {
                "type": "object",
                "properties": {
                    "street": {"type": "string"},
                    "city": {"type": "string"},
                    "zip": {"type": "string"},
                },
                "required": ["street", "city"],
            },
        },
        "required": ["name", "age", "address"],
    },
    "arrays": {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
            "points": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
                    "required": ["x", "y"],
                    "additionalProperties": False,
                },
                "minItems": 2,
            },
            "matrix": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
        },
        "required": ["tags", "points", "matrix"],
    },
    "enums_and_numbers": {
        "type": "object",
        "properties": {
            "role": {"type": "string", "enum": ["admin", "editor", "viewer"]},
            "level": {"enum": [1, 2, 3, None]},
            "kind": {"const": "user"},
            "active": {"type": "boolean"},
            "score": {"type": "number", "minimum": 0, "maximum": 100},
            "count": {"type": "integer", "minimum": -5, "maximum": 5},
            "ratio": {"type": "number"},
        },
        "required": ["role", "level", "kind", "active", "score", "count", "ratio"],
        "additionalProperties": False,
    },
    "unicode_strings": {
        "type": "object",
        "properties": {
            "greeting": {"type": "string", "minLength": 1},
            "città": {"type": "string", "maxLength": 12},
            "名前": {"type": "string"},
            "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
        },
        "required": ["greeting", "città", "名前", "code"],
        "additionalProperties": False,
    },
    "refs_and_unions": {
        "type": "object",
        "$defs": {"item": {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}},
        "properties": {
            "first": {"$ref": "#/$defs/item"},
            "rest": {"type": "array", "items": {"$ref": "#/$defs/item"}},
            "value": {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]},
            "note": {"type": "string"},
        },
        "required": ["first", "value"],
    },
}

WEATHER = {
    "name": "get_weather",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}
SEARCH = {
    "name": "search",
    "parameters": {
        "type": "object",
        "properties": {
            "query": {"type": "string"},
            "limit": {"type": "integer", "minimum": 1, "maximum": 10},
        },
        "required": ["query", "limit"],
    },
}
NOW = {"name": "now"}  # no parameters: the arguments must be {}
TOOL_BLOCK = re.compile(r"<tool_call>\n(.*?)\n</tool_call>", re.DOTALL)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """These single-row ops gain nothing from threads; on a busy 2-core machine OpenMP waits made them 5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer() -> transformers.PreTrainedTokenizerBase:
    return transformers.AutoTokenizer.from_pretrained(cached_test_model("tiny"))


@pytest.fixture(scope="module")
def compiler(tokenizer: transformers.PreTrainedTokenizerBase) -> GrammarCompiler:
    return GrammarCompiler(tokenizer, VOCAB_SIZE, END_TOKEN_IDS)


@pytest.fixture(scope="module")
def close_bias(tokenizer: transformers.PreTrainedTokenizerBase) -> torch.Tensor:
    """CLOSE_BIAS on every token spelled only with `"`, `}` and `]` (byte-level BPE keeps those as is)."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(TOKENIZER_SIZE)))
    bias = torch.zeros(VOCAB_SIZE)
    closers = [i for i, piece in enumerate(pieces) if piece and set(piece) <= set('"}]')]
    bias[closers] = CLOSE_BIAS
    return bias


def allowed_ids(matcher: GrammarMatcher) -> set[int]:
    logits = torch.zeros(1, VOCAB_SIZE)
    apply_structured_masks(logits, [matcher])
    return set(torch.isfinite(logits[0]).nonzero().flatten().tolist())


def generate(
    compiler: GrammarCompiler,
    tokenizer: transformers.PreTrainedTokenizerBase,
    close_bias: torch.Tensor,
    spec: StructuredOutput,
    seed: int,
    greedy: bool = False,
) -> str:
    """Sample under the grammar from random logits until an end token; return the text before it."""
    matcher = compiler.matcher(compiler.compile(spec))
    generator = torch.Generator().manual_seed(seed)
    tokens: list[int] = []
    for _ in range(MAX_STEPS):
        logits = torch.randn(1, VOCAB_SIZE, generator=generator) + close_bias
        apply_structured_masks(logits, [matcher])
        assert torch.isneginf(logits[0, TOKENIZER_SIZE:]).all(), "a padding row was allowed"
        if greedy:
            token = int(logits[0].argmax())
        else:
            token = int(torch.multinomial(torch.softmax(logits[0], dim=-1), 1, generator=generator))
        assert matcher.accept(token), matcher.error
        if token in END_TOKEN_IDS:
            assert matcher.is_terminated
            text: str = tokenizer.decode(tokens)
            assert "\ufffd" not in text, f"invalid UTF-8 in {text!r}"
            return text
        tokens.append(token)
    raise AssertionError(f"no end token within {MAX_STEPS} steps: {tokenizer.decode(tokens)!r}")


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_json_schema_output_always_validates(
    name: str,
    compiler: GrammarCompiler,
    tokenizer: transformers.PreTrainedTokenizerBase,
    close_bias: torch.Tensor,
) -> None:
    schema = SCHEMAS[name]
    spec = StructuredOutput(kind="json_schema", schema=json.dumps(schema))
    for seed, greedy in [(0, False), (1, False), (2, False), (3, True)]:
        text = generate(compiler, tokenizer, close_bias, spec, seed, greedy)
        jsonschema.validate(json.loads(text), schema)


def test_random_walks_produce_varied_unicode(
    compiler: GrammarCompiler, tokenizer: transformers.PreTrainedTokenizerBase, close_bias: torch.Tensor
) -> None:
    spec = StructuredOutput(kind="json_schema", schema=json.dumps(SCHEMAS["unicode_strings"]))
    texts = [generate(compiler, tokenizer, close_bias, spec, seed) for seed in range(10, 14)]
    assert len(set(texts)) == len(texts)
    assert any(ord(char) > 127 for text in texts for char in json.loads(text)["greeting"])


def test_json_object_is_any_object(
    compiler: GrammarCompiler, tokenizer: transformers.PreTrainedTokenizerBase, close_bias: torch.Tensor
) -> None:
    spec = StructuredOutput(kind="json_object")
    for seed in range(4):
        assert isinstance(json.loads(generate(compiler, tokenizer, close_bias, spec, seed)), dict)
    first = allowed_ids(compiler.matcher(compiler.compile(spec)))
    assert set(tokenizer.encode("{")) <= first
    assert all(tokenizer.decode([token]).startswith("{") for token in first)


def test_only_end_tokens_after_the_json(
    compiler: GrammarCompiler, tokenizer: transformers.PreTrainedTokenizerBase
) -> None:
    matcher = compiler.matcher(compiler.compile(StructuredOutput(kind="json_object")))
    for token in tokenizer.encode('{"a": [1, 2.5e3, null, true, {"b": "ü"}]}'):
        assert matcher.accept(token)
    assert allowed_ids(matcher) == set(END_TOKEN_IDS)
    assert not matcher.is_terminated
    assert matcher.accept(END_TOKEN_IDS[1]) and matcher.is_terminated


def test_rejected_token_leaves_only_end_tokens(
    compiler: GrammarCompiler, tokenizer: transformers.PreTrainedTokenizerBase
) -> None:
    matcher = compiler.matcher(compiler.compile(StructuredOutput(kind="json_object")))
    assert not matcher.accept(tokenizer.encode("hello")[0])
    assert matcher.is_error and matcher.error
    assert allowed_ids(matcher) == set(END_TOKEN_IDS)


def tool_calls(text: str, tools: list[dict[str, object]]) -> list[tuple[str, dict[str, object]]]:
    """Check the text is only `<tool_call>` blocks joined by newlines; return each call, validated."""
    blocks = TOOL_BLOCK.findall(text)
    assert text == "\n".join(f"<tool_call>\n{block}\n</tool_call>" for block in blocks), text
    content, parsed = ToolCallParser().parse(text)
    assert content == "" and len(parsed) == len(blocks)
    schemas = {
        str(t["name"]): t.get("parameters", {"type": "object", "additionalProperties": False}) for t in tools
    }
    calls = []
    for block, call in zip(blocks, parsed):
        assert list(json.loads(block)) == ["name", "arguments"]
        arguments = json.loads(call.arguments)
        jsonschema.validate(arguments, schemas[call.name])
        calls.append((call.name, arguments))
    return calls


def test_single_named_tool_call(
    compiler: GrammarCompiler, tokenizer: transformers.PreTrainedTokenizerBase, close_bias: torch.Tensor
) -> None:
    spec = StructuredOutput(kind="tool_calls", tools=json.dumps([WEATHER]))
    first = allowed_ids(compiler.matcher(compiler.compile(spec)))
    assert first == {TOOL_CALL_OPEN_ID}, "the block must open with the single <tool_call> token"
    for seed in range(3):
        calls = tool_calls(generate(compiler, tokenizer, close_bias, spec, seed), [WEATHER])
        assert [name for name, _ in calls] == ["get_weather"]


def test_multiple_tool_calls(
    compiler: GrammarCompiler, tokenizer: transformers.PreTrainedTokenizerBase, close_bias: torch.Tensor
) -> None:
    tools = [WEATHER, SEARCH, NOW]
    spec = StructuredOutput(kind="tool_calls", tools=json.dumps(tools), allow_multiple=True)
    counts = []
    for seed in range(8):
        calls = tool_calls(generate(compiler, tokenizer, close_bias, spec, seed), tools)
        assert all(arguments == {} for name, arguments in calls if name == "now")
        counts.append(len(calls))
    assert max(counts) > 1, counts


def test_one_tool_call_unless_multiple_allowed(
    compiler: GrammarCompiler, tokenizer: transformers.PreTrainedTokenizerBase
) -> None:
    spec = StructuredOutput(kind="tool_calls", tools=json.dumps([NOW]))
    matcher = compiler.matcher(compiler.compile(spec))
    for token in [TOOL_CALL_OPEN_ID, *tokenizer.encode('\n{"name": "now", "arguments": {}}\n'), 151658]:
        assert matcher.accept(token), matcher.error
    assert allowed_ids(matcher) == set(END_TOKEN_IDS)


def test_compile_cache_hits(compiler: GrammarCompiler) -> None:
    schema = json.dumps(SCHEMAS["nested"])
    first = compiler.compile(StructuredOutput(kind="json_schema", schema=schema))
    before = compiler.cache_info()
    second = compiler.compile(StructuredOutput(kind="json_schema", schema=schema))
    after = compiler.cache_info()
    assert second is first
    assert (after.hits, after.misses) == (before.hits + 1, before.misses)
    compiler.compile(StructuredOutput(kind="json_schema", schema='{"type": "object", "title": "only here"}'))
    assert compiler.cache_info().misses == before.misses + 1


def test_matchers_from_one_compiled_grammar_are_independent(
    compiler: GrammarCompiler, tokenizer: transformers.PreTrainedTokenizerBase
) -> None:
    compiled = compiler.compile(StructuredOutput(kind="json_object"))
    advanced, fresh = compiler.matcher(compiled), compiler.matcher(compiled)
    for token in tokenizer.encode('{"a": 1}'):
        assert advanced.accept(token)
    assert allowed_ids(advanced) == set(END_TOKEN_IDS)
    assert allowed_ids(fresh) != set(END_TOKEN_IDS)


def test_batch_masks_only_grammar_rows(
    compiler: GrammarCompiler, tokenizer: transformers.PreTrainedTokenizerBase
) -> None:
    inside_string = compiler.matcher(compiler.compile(StructuredOutput(kind="json_object")))
    for token in tokenizer.encode('{"a": "'):
        assert inside_string.accept(token)
    tool = compiler.matcher(compiler.compile(StructuredOutput(kind="tool_calls", tools=json.dumps([NOW]))))
    logits = torch.randn(4, VOCAB_SIZE, generator=torch.Generator().manual_seed(0))
    original = logits.clone()
    apply_structured_masks(logits, [None, inside_string, None, tool])
    assert torch.equal(logits[0], original[0]) and torch.equal(logits[2], original[2])
    assert torch.isneginf(logits[[1, 3], TOKENIZER_SIZE:]).all()
    assert set(torch.isfinite(logits[3]).nonzero().flatten().tolist()) == {TOOL_CALL_OPEN_ID}
    kept = torch.isfinite(logits[1])
    assert kept.sum() > 100_000, "inside a string nearly every token is allowed"
    assert torch.equal(logits[1][kept], original[1][kept])
    assert allowed_ids(inside_string) == set(kept.nonzero().flatten().tolist())


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"type": "strnig"}', "strnig"),
        ('{"type": "object", "not": {"type": "string"}}', "not"),
        ('{"type": "array", "uniqueItems": true}', "uniqueItems"),
        ('{"$ref": "#/$defs/missing"}', "missing"),
    ],
)
def test_invalid_schema_is_a_request_error(schema: str, problem: str) -> None:
    with pytest.raises(InvalidRequestError, match=re.escape(problem)) as caught:
        StructuredOutput(kind="json_schema", schema=schema)
    assert caught.value.param == "response_format"


@pytest.mark.parametrize(
    ("tools", "problem"),
    [
        ("nope", "not valid JSON"),
        ("[]", "non-empty list"),
        ('[{"parameters": {}}]', "'name'"),
        ('[{"name": "a"}, {"name": "a"}]', "appears twice"),
        ('[{"name": "a", "parameters": "x"}]', "'parameters'"),
        ('[{"name": "a", "parameters": {"type": "object", "if": {}}}]', "if"),
    ],
)
def test_invalid_tools_are_a_request_error(tools: str, problem: str) -> None:
    with pytest.raises(InvalidRequestError, match=re.escape(problem)) as caught:
        StructuredOutput(kind="tool_calls", tools=tools)
    assert caught.value.param == "tools"


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "xml"},
        {"kind": "json_schema"},
        {"kind": "json_object", "schema": "{}"},
        {"kind": "json_schema", "schema": "{}", "tools": "[]"},
        {"kind": "json_object", "allow_multiple": True},
    ],
)
def test_inconsistent_spec_is_a_request_error(fields: dict[str, object]) -> None:
    with pytest.raises(InvalidRequestError):
        StructuredOutput(**fields)  # type: ignore[arg-type]


def test_spec_equality_ignores_nothing_but_the_grammar_cache() -> None:
    a = StructuredOutput(kind="tool_calls", tools=json.dumps([NOW]))
    assert a == StructuredOutput(kind="tool_calls", tools=json.dumps([NOW]))
    assert a != StructuredOutput(kind="tool_calls", tools=json.dumps([NOW]), allow_multiple=True)
    assert hash(a) == hash(StructuredOutput(kind="tool_calls", tools=json.dumps([NOW])))


def test_structured_module_does_not_import_torch() -> None:
    code = "import sys, qwen3_api.engine.structured; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
