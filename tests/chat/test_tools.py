"""ToolCallParser on hand-written Qwen3 outputs: whole parse, OpenAI-style streaming at every boundary."""

from __future__ import annotations

import json
import re

import pytest

from qwen3_api.chat.reasoning import ReasoningParser
from qwen3_api.chat.tools import ToolCall, ToolCallDelta, ToolCallParser
from tests.chat.test_reasoning import chunkings

CALL_ID = re.compile(r"call_[0-9a-f]{24}")


def assemble(deltas: list[ToolCallDelta]) -> tuple[str, list[tuple[str, str]]]:
    """Rebuild (content, [(name, arguments)]) from streamed deltas; check chunks follow OpenAI's protocol."""
    calls: list[list[str]] = []
    ids: set[str] = set()
    for delta in deltas:
        for chunk in delta.tool_calls:
            if chunk.index == len(calls):  # a new call: id and name first, no arguments yet
                assert chunk.id is not None and CALL_ID.fullmatch(chunk.id) and chunk.id not in ids
                assert chunk.name and chunk.arguments == ""
                ids.add(chunk.id)
                calls.append([chunk.name, ""])
            else:  # later chunks add arguments to the latest call only
                assert chunk.index == len(calls) - 1 and chunk.id is None and chunk.name is None
                assert chunk.arguments
                calls[-1][1] += chunk.arguments
    return "".join(d.content for d in deltas), [(name, arguments) for name, arguments in calls]


def stream(chunks: list[str]) -> list[ToolCallDelta]:
    parser = ToolCallParser()
    return [parser.feed(chunk) for chunk in chunks] + [parser.finish()]


def named(calls: list[ToolCall]) -> list[tuple[str, str]]:
    assert all(CALL_ID.fullmatch(call.id) for call in calls)
    return [(call.name, call.arguments) for call in calls]


def block(body: str) -> str:
    return f"<tool_call>\n{body}\n</tool_call>"


# Escaped quotes, braces and a close tag inside strings must not end the arguments early.
TRANSLATE_ARGUMENTS = (
    r'{"text": "你好，世界 🌍👍🏽", "note": "a \"quoted\" {brace} and </tool_call> and \\ inside", '
    r'"to": "ja"}'
)
EVENT_ARGUMENTS = (
    '{"event": {"title": "Sync", "attendees": [{"name": "A"}, {"name": "B", "tags": []}], "meta": {}}, '
    '"notify": true, "count": 2.5, "none": null}'
)

# (output text, expected content, expected [(name, arguments)])
CASES: dict[str, tuple[str, str, list[tuple[str, str]]]] = {
    "one_call": (
        block('{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'),
        "",
        [("get_weather", '{"city": "Paris", "unit": "celsius"}')],
    ),
    "two_calls_with_content_before": (
        "Let me check both cities.\n"
        + block('{"name": "get_weather", "arguments": {"city": "Paris"}}')
        + "\n"
        + block('{"name": "get_time", "arguments": {"tz": "Asia/Tokyo"}}'),
        "Let me check both cities.",
        [("get_weather", '{"city": "Paris"}'), ("get_time", '{"tz": "Asia/Tokyo"}')],
    ),
    "chinese_emoji_and_escapes_in_arguments": (
        block('{"name": "translate", "arguments": ' + TRANSLATE_ARGUMENTS + "}"),
        "",
        [("translate", TRANSLATE_ARGUMENTS)],
    ),
    "nested_arguments": (
        block('{"name": "create_event", "arguments": ' + EVENT_ARGUMENTS + "}"),
        "",
        [("create_event", EVENT_ARGUMENTS)],
    ),
    "compact_json_no_newlines": (
        '<tool_call>{"name":"f","arguments":{"x":[1,2,{"y":"]}"}]}}</tool_call>',
        "",
        [("f", '{"x":[1,2,{"y":"]}"}]}')],
    ),
    "empty_arguments": (block('{"name": "now", "arguments": {}}'), "", [("now", "{}")]),
    "escaped_name": (block('{"name": "get_\\u0077eather", "arguments": {}}'), "", [("get_weather", "{}")]),
    "other_key_order_is_sent_whole": (
        block('{"arguments": {"q": "天气"}, "name": "search"}'),
        "",
        [("search", '{"q": "天气"}')],
    ),
    "string_arguments_are_sent_as_is": (
        block(r'{"name": "f", "arguments": "{\"a\": 1}"}'),
        "",
        [("f", '{"a": 1}')],
    ),
    "missing_arguments_are_empty": (block('{"name": "ping"}'), "", [("ping", "{}")]),
    "invalid_json_block_is_content": (
        "Try this:\n" + block('{"name": get_weather, "arguments": {}}'),
        "Try this:\n" + block('{"name": get_weather, "arguments": {}}'),
        [],
    ),
    "garbage_block_then_valid_call": (
        block("not json at all") + "\n" + block('{"name": "f", "arguments": {"a": 1}}'),
        block("not json at all"),
        [("f", '{"a": 1}')],
    ),
    "no_tool_calls": (
        "a < b and x<y, also <tool> and <tool_cal end",
        "a < b and x<y, also <tool> and <tool_cal end",
        [],
    ),
    "plain_text_keeps_its_whitespace": ("  Hello\n\nworld \n", "  Hello\n\nworld \n", []),
    "content_after_a_call": (
        block('{"name": "f", "arguments": {}}') + "\n\nDone, called f.\n",
        "Done, called f.\n",
        [("f", "{}")],
    ),
    "whitespace_after_last_call_is_dropped": (
        block('{"name": "f", "arguments": {}}') + "\n \n",
        "",
        [("f", "{}")],
    ),
    "truncated_after_arguments": (
        '<tool_call>\n{"name": "f", "arguments": {"a": 1}}',
        "",
        [("f", '{"a": 1}')],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_parse_whole_output(name: str) -> None:
    text, content, calls = CASES[name]
    parsed_content, parsed_calls = ToolCallParser().parse(text)
    assert (parsed_content, named(parsed_calls)) == (content, calls)
    for _, arguments in calls:
        json.loads(arguments)


@pytest.mark.parametrize("name", list(CASES))
def test_streaming_matches_parse_at_every_boundary(name: str) -> None:
    text, content, calls = CASES[name]
    for chunks in chunkings(text, seed=len(name)):
        deltas = stream(chunks)
        assert assemble(deltas) == (content, calls), chunks
        if "<" not in content:  # no tag, nor a piece of one, ever leaks into content
            assert not any("<" in d.content for d in deltas), chunks


def test_name_goes_out_before_the_arguments_finish() -> None:
    parser = ToolCallParser()
    assert parser.feed('Checking.\n<tool_call>\n{"name": "get_we').content == "Checking."
    header = parser.feed('ather", "arguments": {"ci').tool_calls
    assert [(c.index, c.name, c.arguments) for c in header] == [(0, "get_weather", ""), (0, None, '{"ci')]
    assert [c.arguments for c in parser.feed('ty": "Paris"}').tool_calls] == ['ty": "Paris"}']
    assert parser.feed("}\n</tool_call>") == ToolCallDelta()
    assert parser.finish() == ToolCallDelta()


def test_text_with_less_than_is_emitted_promptly() -> None:
    parser = ToolCallParser()
    assert parser.feed("a < b").content == "a < b"
    assert parser.feed(" c <").content == " c"  # " <" could still start <tool_call>
    assert parser.feed("= d").content == " <= d"


def test_invalid_arguments_after_a_streamed_name() -> None:
    # The name went out before the JSON broke, so streaming keeps the call; parse() sees the whole block.
    text = "Sure.\n" + block('{"name": "f", "arguments": {"a": 1,}}') + "\nok"
    content, calls = ToolCallParser().parse(text)
    assert (content, calls) == (text, [])
    for chunks in chunkings(text, seed=7):
        assert assemble(stream(chunks)) == ("Sure.ok", [("f", '{"a": 1,}')]), chunks


def test_close_tag_ends_unbalanced_arguments() -> None:
    text = block('{"name": "f", "arguments": {"a": [1, 2}') + "\n" + block('{"name": "g", "arguments": {}}')
    content, calls = ToolCallParser().parse(text)
    assert (content, named(calls)) == (block('{"name": "f", "arguments": {"a": [1, 2}') + "\n", [("g", "{}")])
    for chunks in chunkings(text, seed=3):
        assert assemble(stream(chunks)) == ("", [("f", '{"a": [1, 2}\n'), ("g", "{}")]), chunks


def test_truncated_inside_arguments() -> None:
    text = 'Let me see.\n<tool_call>\n{"name": "f", "arguments": {"query": "unfinish'
    assert ToolCallParser().parse(text) == (text, [])
    for chunks in chunkings(text, seed=5):
        assert assemble(stream(chunks)) == ("Let me see.", [("f", '{"query": "unfinish')]), chunks


def test_truncated_before_the_name_is_content() -> None:
    text = 'Hi\n<tool_call>\n{"name": "get_'
    assert ToolCallParser().parse(text) == (text, [])
    for chunks in chunkings(text, seed=9):
        assert assemble(stream(chunks)) == (text, []), chunks


# Thinking, then content with a tool call: ReasoningParser's content is what ToolCallParser reads.
THINK_THEN_CALL = (
    "<think>\nThe user wants the weather in 北京. I should call get_weather. <tool_call> is the format.\n"
    "</think>\n\n"
    "I'll look that up.\n" + block('{"name": "get_weather", "arguments": {"city": "北京", "days": [1, 2]}}')
)
THINK_THEN_CALL_EXPECTED = (
    "The user wants the weather in 北京. I should call get_weather. <tool_call> is the format.",
    "I'll look that up.",
    [("get_weather", '{"city": "北京", "days": [1, 2]}')],
)


def test_reasoning_then_tool_call_whole() -> None:
    reasoning, content = ReasoningParser().split(THINK_THEN_CALL)
    tool_content, calls = ToolCallParser().parse(content)
    assert (reasoning, tool_content, named(calls)) == THINK_THEN_CALL_EXPECTED


def test_reasoning_then_tool_call_streamed() -> None:
    for chunks in chunkings(THINK_THEN_CALL, seed=11):
        reasoning_parser, tool_parser = ReasoningParser(), ToolCallParser()
        reasoning: list[str] = []
        deltas: list[ToolCallDelta] = []
        for chunk in chunks:
            step = reasoning_parser.feed(chunk)
            reasoning.append(step.reasoning)
            deltas.append(tool_parser.feed(step.content))
        last = reasoning_parser.finish()
        reasoning.append(last.reasoning)
        deltas += [tool_parser.feed(last.content), tool_parser.finish()]
        content, calls = assemble(deltas)
        assert ("".join(reasoning), content, calls) == THINK_THEN_CALL_EXPECTED, chunks
        assert not any("<" in d.content for d in deltas), chunks


def test_parse_does_not_disturb_streaming_state() -> None:
    parser = ToolCallParser()
    parser.feed('<tool_call>\n{"name": "f", "arguments": {"a"')
    assert parser.parse("plain") == ("plain", [])
    assert [c.arguments for c in parser.feed(": 1}}\n</tool_call>").tool_calls] == [": 1}"]


def test_feed_after_finish_is_an_error() -> None:
    parser = ToolCallParser()
    parser.finish()
    with pytest.raises(RuntimeError):
        parser.feed("x")
