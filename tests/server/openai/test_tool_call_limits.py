"""parallel_tool_calls false keeps at most one call, whole and streamed (the chat service's parsing, no server)."""

from __future__ import annotations

import pytest

from qwen3_api.config import Settings
from qwen3_api.engine.async_engine import FinalOutput
from qwen3_api.engine.outputs import FinishReason, RequestOutput
from qwen3_api.engine.sampling import SamplingParams
from qwen3_api.server.openai.serving_chat import ChatServing, ChoiceState, PreparedChat, parse_delta

TWO_CALLS = (
    'Sure.\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
)


def prepared(max_tool_calls: int | None) -> PreparedChat:
    return PreparedChat([1], SamplingParams(), 1, False, True, max_tool_calls=max_tool_calls)


@pytest.mark.parametrize(("max_tool_calls", "names"), [(None, ["get_time", "get_weather"]), (1, ["get_time"])])
def test_whole_output(max_tool_calls: int | None, names: list[str]) -> None:
    out = FinalOutput(TWO_CALLS, [1, 2], FinishReason.STOP, 1, 2, 0)
    choice = ChatServing(None, Settings()).choice(0, out, prepared(max_tool_calls))  # type: ignore[arg-type]
    assert [c["function"]["name"] for c in choice.message.tool_calls or []] == names
    assert choice.message.content == "Sure." and choice.finish_reason == "tool_calls"


@pytest.mark.parametrize(("max_tool_calls", "indexes"), [(None, {0, 1}), (1, {0})])
def test_streamed(max_tool_calls: int | None, indexes: set[int]) -> None:
    state = ChoiceState.of(prepared(max_tool_calls))
    pieces = [TWO_CALLS[i : i + 7] for i in range(0, len(TWO_CALLS), 7)]
    seen: set[int] = set()
    content = ""
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        out = RequestOutput("r", piece, [1], finished=last, finish_reason=FinishReason.STOP if last else None)
        delta = parse_delta(state, out)
        content += delta.content
        seen |= {c.index for c in delta.tool_calls}
    assert seen == indexes and content == "Sure."
