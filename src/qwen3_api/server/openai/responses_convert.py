"""Translation between the Responses API and the chat-completions machinery it runs on.

A Responses request becomes a `ChatCompletionRequest` (so templating, thinking, tools and structured output are
the chat path's), and a finished chat choice becomes Responses output items (`reasoning`, `message`,
`function_call`).
"""

from __future__ import annotations

from typing import Any

from qwen3_api.server.openai.params import REASONING_EFFORT_BUDGETS
from qwen3_api.server.openai.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    FunctionCall,
    FunctionDefinition,
    JsonSchemaFormat,
    NamedFunction,
    NamedToolChoice,
    ResponseFormat,
    ToolCall,
    ToolDefinition,
)
from qwen3_api.server.openai.responses_protocol import (
    Effort,
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionToolChoice,
    MessageItem,
    ReasoningItem,
    ResponsesRequest,
    TextFormatJsonObject,
    TextFormatJsonSchema,
    new_id,
)

# reasoning.effort -> Qwen3 thinking: "none"/"minimal" answer directly, low/medium/high think.
THINKING_BY_EFFORT: dict[str, bool] = {"none": False, "minimal": False, "low": True, "medium": True, "high": True}


def thinking_for_effort(effort: Effort | None) -> bool | None:
    """enable_thinking for a reasoning effort (None: the model's default)."""
    return None if effort is None else THINKING_BY_EFFORT[effort]


def thinking_budget_for_effort(effort: Effort | None) -> int | None:
    """The most thinking tokens an effort allows (the chat API's reasoning_effort budgets; None: no budget)."""
    return REASONING_EFFORT_BUDGETS.get(effort) if effort is not None else None


def input_messages(request: ResponsesRequest) -> list[ChatMessage]:
    """The request's `input` as chat messages (without `instructions`).

    Consecutive `function_call` items (and those right after an assistant message) form one assistant turn
    with several tool calls; a `reasoning` item becomes the thinking of the assistant turn that follows it.
    """
    messages: list[ChatMessage] = []
    reasoning: str | None = None
    for item in request.input:
        if isinstance(item, ReasoningItem):
            reasoning = (reasoning or "") + item.text
        elif isinstance(item, MessageItem):
            if item.role == "assistant":
                messages.append(ChatMessage(role="assistant", content=item.text, reasoning_content=reasoning))
                reasoning = None
            else:
                messages.append(ChatMessage(role=item.role, content=item.text))
        elif isinstance(item, FunctionCallItem):
            call = ToolCall(id=item.call_id, function=FunctionCall(name=item.name, arguments=item.arguments))
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant" and reasoning is None:
                last.tool_calls = [*(last.tool_calls or []), call]
            else:
                messages.append(ChatMessage(role="assistant", tool_calls=[call], reasoning_content=reasoning))
                reasoning = None
        elif isinstance(item, FunctionCallOutputItem):
            messages.append(ChatMessage(role="tool", tool_call_id=item.call_id, content=item.output))
    return messages


def to_chat_request(request: ResponsesRequest, history: list[ChatMessage]) -> ChatCompletionRequest:
    """The chat-completions request that generates this response; `history` is the conversation so far."""
    messages = list(history)
    if request.instructions:
        messages.insert(0, ChatMessage(role="system", content=request.instructions))
    tools = None
    if request.tools:
        tools = [
            ToolDefinition(
                type="function",
                function=FunctionDefinition(
                    name=t.name, description=t.description, parameters=t.parameters, strict=t.strict
                ),
            )
            for t in request.tools
        ]
    tool_choice: Any = request.tool_choice
    if isinstance(tool_choice, FunctionToolChoice):
        tool_choice = NamedToolChoice(type="function", function=NamedFunction(name=tool_choice.name))
    fields = {
        "model": request.model,
        "messages": messages,
        "max_completion_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "user": request.user,
        "tools": tools,
        "tool_choice": tool_choice,
        "parallel_tool_calls": request.parallel_calls,
        "response_format": _response_format(request),
        "enable_thinking": thinking_for_effort(request.reasoning.effort if request.reasoning else None),
        "thinking_budget": thinking_budget_for_effort(request.reasoning.effort if request.reasoning else None),
    }
    return ChatCompletionRequest.model_validate(fields)


def _response_format(request: ResponsesRequest) -> ResponseFormat | None:
    text_format = request.text.format if request.text else None
    if isinstance(text_format, TextFormatJsonObject):
        return ResponseFormat(type="json_object")
    if isinstance(text_format, TextFormatJsonSchema):
        schema = JsonSchemaFormat.model_validate(
            {"name": text_format.name, "schema": text_format.schema_, "description": text_format.description,
             "strict": text_format.strict}  # fmt: skip
        )
        return ResponseFormat(type="json_schema", json_schema=schema)
    return None


def reasoning_item(text: str, status: str = "completed", item_id: str | None = None) -> dict[str, Any]:
    return {"type": "reasoning", "id": item_id or new_id("rs"), "summary": [],
            "content": [{"type": "reasoning_text", "text": text}], "status": status}  # fmt: skip


def message_item(text: str, status: str = "completed", item_id: str | None = None) -> dict[str, Any]:
    return {"type": "message", "id": item_id or new_id("msg"), "status": status, "role": "assistant",
            "content": [output_text_part(text)]}  # fmt: skip


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(
    call_id: str, name: str, arguments: str, status: str = "completed", item_id: str | None = None
) -> dict[str, Any]:
    return {"type": "function_call", "id": item_id or new_id("fc"), "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}  # fmt: skip


def output_items(
    reasoning: str | None, content: str | None, calls: list[dict[str, Any]], status: str
) -> list[dict[str, Any]]:
    """A finished choice as output items, in the order the model wrote them: thinking, text, calls."""
    items = []
    if reasoning:
        items.append(reasoning_item(reasoning, status))
    if content:
        items.append(message_item(content, status))
    for call in calls:
        items.append(function_call_item(call["id"], call["function"]["name"], call["function"]["arguments"], status))
    if not items:  # the model said nothing (or only markup we dropped): still one, empty, message
        items.append(message_item("", status))
    return items


def history_of_output(items: list[dict[str, Any]]) -> list[ChatMessage]:
    """The assistant turn that output items leave in the conversation (for `previous_response_id`)."""
    reasoning = "".join(c["text"] for i in items if i["type"] == "reasoning" for c in i["content"]) or None
    content = "".join(c["text"] for i in items if i["type"] == "message" for c in i["content"]) or None
    calls = [
        ToolCall(id=i["call_id"], function=FunctionCall(name=i["name"], arguments=i["arguments"]))
        for i in items
        if i["type"] == "function_call"
    ]
    return [ChatMessage(role="assistant", content=content, reasoning_content=reasoning, tool_calls=calls or None)]
