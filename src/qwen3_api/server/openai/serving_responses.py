"""POST /v1/responses on the chat-completions machinery: one output choice, streamed as Responses events.

The request is translated into a chat request (`responses_convert`) and prepared by `ChatServing`, so prompt
rendering, Qwen3 thinking, tool-call parsing and structured output are the chat path's. What is added here is
the Responses shape: output items, the event sequence, usage names, and the store behind
`previous_response_id`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from qwen3_api.config import Settings
from qwen3_api.engine.async_engine import AsyncEngine
from qwen3_api.engine.outputs import FinishReason
from qwen3_api.engine.structured import StructuredOutput
from qwen3_api.errors import EngineError, InvalidRequestError, Qwen3APIError
from qwen3_api.server.openai.protocol import ChatMessage, now
from qwen3_api.server.openai.responses_convert import (
    function_call_item,
    history_of_output,
    input_messages,
    message_item,
    output_items,
    output_text_part,
    reasoning_item,
    thinking_for_effort,
    to_chat_request,
)
from qwen3_api.server.openai.responses_protocol import (
    FunctionToolChoice,
    ResponsesRequest,
    TextFormatText,
    new_id,
)
from qwen3_api.server.openai.responses_store import ResponseStore, StoredResponse
from qwen3_api.server.openai.serving import OpenAIServing, log_user
from qwen3_api.server.openai.serving_chat import (
    ChatServing,
    ChoiceDelta,
    ChoiceState,
    PreparedChat,
    log_invalid_tool_calls,
    parse_delta,
)
from qwen3_api.server.response_cache import GenerationJob

if TYPE_CHECKING:
    from qwen3_api.server.cached_generation import Generation

logger = logging.getLogger(__name__)

# Chat-request parameter names as the Responses API calls them, for error messages.
_PARAM_NAMES = {
    "max_completion_tokens": "max_output_tokens",
    "max_tokens": "max_output_tokens",
    "enable_thinking": "reasoning.effort",
    "thinking_budget": "reasoning.effort",
    "response_format": "text.format",
    "messages": "input",
}


@dataclass(frozen=True)
class PreparedResponse:
    """The prepared chat generation and the conversation it continues (without instructions)."""

    chat: PreparedChat
    history: list[ChatMessage]
    response_id: str
    created_at: int

    @property
    def jobs(self) -> list[GenerationJob]:
        return self.chat.jobs

    @property
    def shape(self) -> dict[str, Any]:
        """What changes the formatting beyond the prompt and parameters (for the response cache key)."""
        return self.chat.shape


class ResponsesServing(OpenAIServing):
    """The Responses API over the shared engine."""

    route = "responses"

    def __init__(self, engine: AsyncEngine, settings: Settings, store: ResponseStore) -> None:
        super().__init__(engine, settings)
        self.store = store
        self.chat = ChatServing(engine, settings)
        close = engine.tokenizer.encode("</think>")
        self._think_close_id = close[0] if len(close) == 1 else None

    # ---- preparation ---------------------------------------------------------------------------------------
    def prepare(self, request: ResponsesRequest) -> PreparedResponse:
        history: list[ChatMessage] = []
        if request.previous_response_id is not None:
            history = list(self.store.get(request.previous_response_id, "previous_response_id").history)
        history += input_messages(request)
        self._check_thinking(request)
        try:
            chat_request = to_chat_request(request, history)
            prepared = self.chat.prepare(chat_request)
        except ValidationError as exc:
            raise InvalidRequestError(str(exc.errors()[0].get("msg", exc))) from exc
        except InvalidRequestError as exc:
            exc.param = _PARAM_NAMES.get(exc.param or "", exc.param)
            raise
        return PreparedResponse(prepared, history, new_id("resp"), now())

    @staticmethod
    def grammars(prepared: PreparedResponse) -> list[StructuredOutput]:
        """The grammars to compile before the request is queued (those of the chat generation it runs)."""
        return ChatServing.grammars(prepared.chat)

    @staticmethod
    def num_sequences(prepared: PreparedResponse) -> int:
        """Engine sequences the request takes (its admission cost)."""
        return ChatServing.num_sequences(prepared.chat)

    @staticmethod
    def _check_thinking(request: ResponsesRequest) -> None:
        effort = request.reasoning.effort if request.reasoning else None
        forced = request.tool_choice == "required" or isinstance(request.tool_choice, FunctionToolChoice)
        json_format = request.text is not None and not isinstance(request.text.format, TextFormatText | None)
        if thinking_for_effort(effort) and (forced or json_format):
            raise InvalidRequestError(
                f"reasoning.effort {effort!r} turns thinking on, which cannot be combined with a JSON text.format or "
                "a forced tool call (the grammar starts at the first token); use effort 'minimal' or none",
                "reasoning.effort",
            )

    # ---- the response object -------------------------------------------------------------------------------
    def response_object(
        self,
        request: ResponsesRequest,
        prepared: PreparedResponse,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        params = prepared.chat.params
        text_format = request.text.format if request.text and request.text.format else TextFormatText(type="text")
        tool_choice: Any = request.tool_choice or ("auto" if request.tools else "none")
        if isinstance(tool_choice, FunctionToolChoice):
            tool_choice = tool_choice.model_dump()
        return {
            "id": prepared.response_id,
            "object": "response",
            "created_at": prepared.created_at,
            "status": status,
            "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": request.instructions,
            "max_output_tokens": request.max_output_tokens,
            "model": request.model,
            "output": output,
            "parallel_tool_calls": request.parallel_calls,
            "previous_response_id": request.previous_response_id,
            "reasoning": {"effort": request.reasoning.effort if request.reasoning else None, "summary": None},
            "store": request.stored,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "text": {"format": text_format.model_dump(by_alias=True, exclude_none=True)},
            "tool_choice": tool_choice,
            "tools": [tool.model_dump() for tool in request.tools or []],
            "truncation": "disabled",
            "usage": usage,
            "user": request.user,
            "metadata": request.metadata or {},
        }

    def _usage(self, prompt_tokens: int, output_tokens: list[int], cached: int, had_reasoning: bool) -> dict[str, Any]:
        reasoning = 0
        if had_reasoning:
            close = self._think_close_id
            reasoning = output_tokens.index(close) + 1 if close in output_tokens else len(output_tokens)
        return {
            "input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": len(output_tokens),
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt_tokens + len(output_tokens),
        }

    def _remember(
        self, request: ResponsesRequest, prepared: PreparedResponse, response: dict[str, Any]
    ) -> None:
        if request.stored:
            history = prepared.history + history_of_output(response["output"])
            self.store.put(prepared.response_id, StoredResponse(response, history))

    # ---- non-streaming -------------------------------------------------------------------------------------
    async def complete(
        self, request: ResponsesRequest, prepared: PreparedResponse, generation: Generation
    ) -> dict[str, Any]:
        log_user(prepared.response_id, request.user)
        chat = prepared.chat
        out = (await generation.outputs())[0]
        message = self.chat.choice(0, out, chat, prepared.response_id).message
        status = "incomplete" if out.finish_reason is FinishReason.LENGTH else "completed"
        items = output_items(message.reasoning_content, message.content, message.tool_calls or [], status)
        usage = self._usage(
            len(chat.prompt_token_ids), out.token_ids, out.cached_tokens, bool(message.reasoning_content)
        )
        response = self.response_object(request, prepared, status, items, usage)
        self._remember(request, prepared, response)
        return response

    # ---- streaming -----------------------------------------------------------------------------------------
    async def stream(
        self, request: ResponsesRequest, prepared: PreparedResponse, generation: Generation
    ) -> AsyncIterator[str]:
        log_user(prepared.response_id, request.user)
        events = _Events()
        started = self.response_object(request, prepared, "in_progress", [], None)
        yield events.emit("response.created", response=started)
        yield events.emit("response.in_progress", response=started)
        chat = prepared.chat
        state = ChoiceState.of(chat)
        output = _StreamedOutput(events)
        token_ids: list[int] = []
        cached = 0
        finish: FinishReason | None = None
        try:
            async for out in generation.streams()[0]:
                token_ids.extend(out.new_token_ids)
                cached = out.cached_tokens
                for event in output.feed(parse_delta(state, out)):
                    yield event
                finish = out.finish_reason
            status = "incomplete" if finish is FinishReason.LENGTH else "completed"
            log_invalid_tool_calls(prepared.response_id, state.tools.invalid_blocks if state.tools else 0)
            if output.is_empty:  # as non-streamed: at least one, empty, message
                for event in output.open_message():
                    yield event
            for event in output.close(status):
                yield event
            usage = self._usage(len(chat.prompt_token_ids), token_ids, cached, output.had_reasoning)
            response = self.response_object(request, prepared, status, output.items, usage)
            self._remember(request, prepared, response)
            kind = "response.completed" if status == "completed" else "response.incomplete"
            yield events.emit(kind, response=response)
        except Exception as exc:  # the stream has begun: end it with response.failed, never hang
            error = exc if isinstance(exc, Qwen3APIError) else EngineError(str(exc) or type(exc).__name__)
            logger.warning("response %s failed: %s", prepared.response_id, error)
            failed = self.response_object(
                request, prepared, "failed", output.items, None, {"code": "server_error", "message": str(error)}
            )
            yield events.emit("response.failed", response=failed)


class _Events:
    """Numbers and formats Responses SSE events (`event:` line and JSON `data:` with `sequence_number`)."""

    def __init__(self) -> None:
        self.sequence_number = 0

    def emit(self, kind: str, **fields: Any) -> str:
        payload = {"type": kind, "sequence_number": self.sequence_number, **fields}
        self.sequence_number += 1
        return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


class _StreamedOutput:
    """Turns streamed choice deltas into output items and their added/delta/done events, one open item at a time."""

    def __init__(self, events: _Events) -> None:
        self.events = events
        self.items: list[dict[str, Any]] = []  # finished items, in output order
        self.had_reasoning = False
        self._kind: str | None = None  # "reasoning", "message" or "function_call": the open item
        self._id = ""
        self._text = ""  # the open item's text so far (reasoning, content, or arguments)
        self._call: tuple[int, str, str] | None = None  # (parser call index, call id, name) of an open call

    @property
    def is_empty(self) -> bool:
        return self._kind is None and not self.items

    def open_message(self) -> list[str]:
        return self._open("message")

    @property
    def _index(self) -> int:
        return len(self.items)

    def feed(self, delta: ChoiceDelta) -> list[str]:
        events: list[str] = []
        if delta.reasoning:
            self.had_reasoning = True
            events += self._open("reasoning")
            events.append(self._text_delta("response.reasoning_text.delta", delta.reasoning))
        if delta.content:
            events += self._open("message")
            events.append(self._text_delta("response.output_text.delta", delta.content, logprobs=[]))
        for chunk in delta.tool_calls:
            if chunk.name is not None and chunk.id is not None:
                events += self.close("completed")
                self._kind, self._id, self._text = "function_call", new_id("fc"), ""
                self._call = (chunk.index, chunk.id, chunk.name)
                item = function_call_item(chunk.id, chunk.name, "", "in_progress", self._id)
                events.append(self.events.emit("response.output_item.added", output_index=self._index, item=item))
            if chunk.arguments and self._kind == "function_call":
                self._text += chunk.arguments
                events.append(self.events.emit("response.function_call_arguments.delta", item_id=self._id,
                                               output_index=self._index, delta=chunk.arguments))  # fmt: skip
        return events

    def _open(self, kind: str) -> list[str]:
        if self._kind == kind:
            return []
        events = self.close("completed")
        self._kind, self._id, self._text = kind, new_id("rs" if kind == "reasoning" else "msg"), ""
        if kind == "reasoning":
            item: dict[str, Any] = {"type": "reasoning", "id": self._id, "summary": [], "content": [],
                                    "status": "in_progress"}  # fmt: skip
            part = {"type": "reasoning_text", "text": ""}
        else:
            item = {"type": "message", "id": self._id, "status": "in_progress", "role": "assistant", "content": []}
            part = output_text_part("")
        events.append(self.events.emit("response.output_item.added", output_index=self._index, item=item))
        events.append(self.events.emit("response.content_part.added", item_id=self._id, output_index=self._index,
                                       content_index=0, part=part))  # fmt: skip
        return events

    def _text_delta(self, kind: str, text: str, **extra: Any) -> str:
        self._text += text
        return self.events.emit(kind, item_id=self._id, output_index=self._index, content_index=0, delta=text, **extra)

    def close(self, status: str) -> list[str]:
        """Finish the open item (if any) with `status`: its done events, and it joins `items`."""
        if self._kind is None:
            return []
        index, item_id, text, emit = self._index, self._id, self._text, self.events.emit
        events = []
        if self._kind == "function_call" and self._call is not None:
            _, call_id, name = self._call
            item = function_call_item(call_id, name, text, status, item_id)
            events.append(emit("response.function_call_arguments.done", item_id=item_id, output_index=index,
                               name=name, arguments=text))  # fmt: skip
        else:
            if self._kind == "reasoning":
                item = reasoning_item(text, status, item_id)
                part: dict[str, Any] = {"type": "reasoning_text", "text": text}
                events.append(emit("response.reasoning_text.done", item_id=item_id, output_index=index,
                                   content_index=0, text=text))  # fmt: skip
            else:
                item = message_item(text, status, item_id)
                part = output_text_part(text)
                events.append(emit("response.output_text.done", item_id=item_id, output_index=index,
                                   content_index=0, text=text, logprobs=[]))  # fmt: skip
            events.append(emit("response.content_part.done", item_id=item_id, output_index=index,
                               content_index=0, part=part))  # fmt: skip
        events.append(emit("response.output_item.done", output_index=index, item=item))
        self.items.append(item)
        self._kind, self._call = None, None
        return events
