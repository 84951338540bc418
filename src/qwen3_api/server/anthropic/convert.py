"""An Anthropic Messages request as a chat-completions request, so one machinery templates, thinks and parses tools.

- `system` (string or text blocks) becomes the system message; text blocks of one message are joined by "\\n";
- user `tool_result` blocks become tool messages (before the user's text, as Anthropic orders them), with
  `is_error` results prefixed "Error: ";
- assistant `thinking` blocks become `reasoning_content`, `tool_use` blocks tool calls with JSON arguments;
- `tools[].input_schema` is the function's parameters; `tool_choice` auto/any/tool/none maps to
  auto/required/named/none, `disable_parallel_tool_use` to `parallel_tool_calls: false`;
- `thinking` enabled is Qwen3 thinking with `budget_tokens` as the thinking budget, adaptive is thinking without a
  budget; disabled, or absent (as Anthropic defaults), is thinking off.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from qwen3_api.errors import InvalidRequestError
from qwen3_api.server.anthropic.protocol import (
    CountTokensRequest,
    Message,
    MessagesRequest,
    TextBlock,
    ThinkingBlock,
    ToolChoiceAuto,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlock,
    ToolUseBlock,
)
from qwen3_api.server.openai.protocol import ChatCompletionRequest

AnthropicPrompt = MessagesRequest | CountTokensRequest


def to_chat_request(request: AnthropicPrompt, max_tokens: int | None = None) -> ChatCompletionRequest:
    """The chat-completions request that asks the model the same thing (validated like any chat request)."""
    body: dict[str, Any] = {"model": request.model, "messages": _messages(request)}
    if request.tools:
        body["tools"] = [
            {"type": "function",
             "function": {"name": t.name, "description": t.description, "parameters": t.input_schema}}
            for t in request.tools
        ]
    body.update(_tool_choice(request))
    body["enable_thinking"] = request.thinking_on
    body["thinking_budget"] = request.thinking_budget
    if isinstance(request, MessagesRequest):
        body["max_tokens"] = request.max_tokens
        body["stop"] = request.stop_sequences or None
        body["temperature"], body["top_p"], body["top_k"] = request.temperature, request.top_p, request.top_k
        body["user"] = request.metadata.user_id if request.metadata else None
    elif max_tokens is not None:
        body["max_tokens"] = max_tokens
    try:
        return ChatCompletionRequest.model_validate({k: v for k, v in body.items() if v is not None})
    except ValidationError as exc:  # a limit of the chat machinery (e.g. at most 8 stop sequences)
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidRequestError(f"{where}: {first['msg']}", where) from exc


def _messages(request: AnthropicPrompt) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if request.system_text is not None:
        messages.append({"role": "system", "content": request.system_text})
    for message in request.messages:
        messages.extend(_user(message) if message.role == "user" else [_assistant(message)])
    return messages


def _user(message: Message) -> list[dict[str, Any]]:
    blocks = message.blocks()
    out: list[dict[str, Any]] = []
    for block in blocks:
        if isinstance(block, ToolResultBlock):
            text = f"Error: {block.text}" if block.is_error else block.text
            out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": text})
        elif not isinstance(block, TextBlock):
            raise InvalidRequestError(f"user messages cannot hold {block.type} blocks", "messages")
    texts = [b.text for b in blocks if isinstance(b, TextBlock)]
    if texts or not out:
        out.append({"role": "user", "content": "\n".join(texts)})
    return out


def _assistant(message: Message) -> dict[str, Any]:
    blocks = message.blocks()
    text = "\n".join(b.text for b in blocks if isinstance(b, TextBlock))
    entry: dict[str, Any] = {"role": "assistant", "content": text}
    thoughts = [b.thinking for b in blocks if isinstance(b, ThinkingBlock)]
    if thoughts:
        entry["reasoning_content"] = "\n".join(thoughts)
    calls = [b for b in blocks if isinstance(b, ToolUseBlock)]
    if calls:
        entry["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.input)}}
            for c in calls
        ]
    if any(isinstance(b, ToolResultBlock) for b in blocks):
        raise InvalidRequestError("assistant messages cannot hold tool_result blocks", "messages")
    return entry


def _tool_choice(request: AnthropicPrompt) -> dict[str, Any]:
    choice = request.tool_choice
    if choice is None or not request.tools:
        return {}
    if isinstance(choice, ToolChoiceNone):
        return {"tool_choice": "none"}
    single = {"parallel_tool_calls": False} if choice.disable_parallel_tool_use else {}
    if isinstance(choice, ToolChoiceAuto):
        return {"tool_choice": "auto", **single}
    if isinstance(choice, ToolChoiceTool):
        return {"tool_choice": {"type": "function", "function": {"name": choice.name}}, **single}
    return {"tool_choice": "required", **single}  # "any"
