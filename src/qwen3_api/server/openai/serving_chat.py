"""POST /v1/chat/completions: prompt rendering, Qwen3 thinking and tool calls, streamed and not."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qwen3_api.chat.reasoning import ReasoningParser, prompt_opens_reasoning
from qwen3_api.chat.tools import ToolCallChunk, ToolCallParser
from qwen3_api.engine.outputs import FinishReason, RequestOutput
from qwen3_api.engine.sampling import SamplingParams
from qwen3_api.engine.structured import StructuredOutput
from qwen3_api.errors import InvalidRequestError
from qwen3_api.server.openai.params import (
    NON_THINKING_DEFAULTS,
    THINKING_DEFAULTS,
    SamplingDefaults,
    to_sampling_params,
)
from qwen3_api.server.openai.protocol import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    ChatResponseMessage,
    NamedToolChoice,
    completion_id,
    now,
)
from qwen3_api.server.openai.serving import OpenAIServing, error_event, generation_defaults, usage_of
from qwen3_api.server.response_cache import GenerationJob
from qwen3_api.server.streams import DONE, merge, sse

if TYPE_CHECKING:
    from qwen3_api.engine.async_engine import FinalOutput
    from qwen3_api.server.cached_generation import Generation

EMPTY_THINK_BLOCK = "<think>\n\n</think>\n\n"


@dataclass(frozen=True)
class PreparedChat:
    """Everything decided before generation starts (errors surface here, before any byte is streamed)."""

    prompt_token_ids: list[int]
    params: SamplingParams
    n: int
    starts_in_reasoning: bool
    parse_tools: bool

    @property
    def jobs(self) -> list[GenerationJob]:
        return [GenerationJob(self.prompt_token_ids, self.params, self.n)]

    @property
    def shape(self) -> dict[str, Any]:
        """What changes the formatting beyond the prompt and parameters (for the response cache key)."""
        return {"starts_in_reasoning": self.starts_in_reasoning, "parse_tools": self.parse_tools}


@dataclass
class _ChoiceState:
    reasoning: ReasoningParser
    tools: ToolCallParser | None
    saw_tool_call: bool = False
    completion_tokens: int = 0
    cached_tokens: int = 0
    logprobs: list[dict[str, Any]] = field(default_factory=list)


def _template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as the chat template expects them (developer = system; tool call arguments as objects)."""
    rendered = []
    for message in messages:
        entry = message.model_dump(exclude_none=True)
        if entry["role"] == "developer":
            entry["role"] = "system"
        for call in entry.get("tool_calls", []):
            with contextlib.suppress(ValueError):  # the template writes a string argument verbatim
                call["function"]["arguments"] = json.loads(call["function"]["arguments"])
        rendered.append(entry)
    return rendered


class ChatServing(OpenAIServing):
    """Chat completions over the shared engine."""

    route = "chat"

    def prepare(self, request: ChatCompletionRequest) -> PreparedChat:
        self.check_model(request.model)
        self.check_n(request.n)
        tokenizer = self.engine.tokenizer
        tool_choice = request.tool_choice or ("auto" if request.tools else "none")
        structured = self._structured(request, tool_choice)
        thinking = request.thinking_requested
        if structured is not None and tokenizer.supports_thinking:
            if thinking:
                raise InvalidRequestError(
                    "enable_thinking cannot be combined with response_format json or forced tool calls: the "
                    "grammar starts at the first token",
                    "enable_thinking",
                )
            thinking = False
        extra = {k: v for k, v in (request.chat_template_kwargs or {}).items() if k != "enable_thinking"}
        tools = [t.model_dump(exclude_none=True) for t in request.tools or []] if tool_choice != "none" else None
        prompt = tokenizer.render_chat(
            _template_messages(request.messages), tools=tools, enable_thinking=thinking, extra_template_kwargs=extra
        )
        prompt_ids = tokenizer.encode(prompt)
        thinking_mode = tokenizer.supports_thinking and thinking is not False and not prompt.endswith(EMPTY_THINK_BLOCK)
        defaults = self._defaults(thinking_mode)
        max_tokens = request.max_completion_tokens or request.max_tokens or self.remaining_tokens(prompt_ids)
        logprobs = (request.top_logprobs or 0) if request.logprobs else None
        params = to_sampling_params(
            request, max_tokens=max_tokens, defaults=defaults, logprobs=logprobs, structured=structured
        )
        param = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
        self.engine.check_request(prompt_ids, params, param)
        return PreparedChat(prompt_ids, params, request.n, prompt_opens_reasoning(prompt), tools is not None)

    def _defaults(self, thinking_mode: bool) -> SamplingDefaults:
        if self.engine.tokenizer.supports_thinking:
            return THINKING_DEFAULTS if thinking_mode else NON_THINKING_DEFAULTS
        return generation_defaults(self.engine)

    @staticmethod
    def _structured(request: ChatCompletionRequest, tool_choice: object) -> StructuredOutput | None:
        if isinstance(tool_choice, NamedToolChoice) or tool_choice == "required":
            functions = [t.function for t in request.tools or []]
            if isinstance(tool_choice, NamedToolChoice):
                functions = [f for f in functions if f.name == tool_choice.function.name]
            definitions = [{"name": f.name, "parameters": f.parameters or {"type": "object"}} for f in functions]
            named = isinstance(tool_choice, NamedToolChoice)  # a named function is called exactly once
            return StructuredOutput(
                kind="tool_calls",
                tools=json.dumps(definitions),
                allow_multiple=request.parallel_tool_calls and not named,
            )
        response_format = request.response_format
        if response_format is None or response_format.type == "text":
            return None
        schema = response_format.json_schema.schema_ if response_format.json_schema else None
        if response_format.type == "json_object" or schema is None:
            return StructuredOutput(kind="json_object")
        return StructuredOutput(kind="json_schema", schema=json.dumps(schema))

    # ---- non-streaming -------------------------------------------------------------------------------------
    async def complete(
        self, request: ChatCompletionRequest, prepared: PreparedChat, generation: Generation
    ) -> ChatCompletion:
        outputs = await generation.outputs()
        choices = [self._choice(i, out, prepared) for i, out in enumerate(outputs)]
        return ChatCompletion(
            id=completion_id("chatcmpl"),
            created=now(),
            model=request.model,
            choices=choices,
            usage=usage_of(len(prepared.prompt_token_ids), outputs),
        )

    def _choice(self, index: int, out: FinalOutput, prepared: PreparedChat) -> ChatChoice:
        reasoning, content = ReasoningParser(prepared.starts_in_reasoning).split(out.text)
        calls = []
        if prepared.parse_tools:
            content, parsed = ToolCallParser().parse(content)
            calls = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in parsed
            ]
        finish = out.finish_reason.value
        if calls and out.finish_reason is FinishReason.STOP:
            finish = "tool_calls"
        message = ChatResponseMessage(
            content=content if content or not calls else None,
            reasoning_content=reasoning,
            tool_calls=calls or None,
        )
        logprobs = None
        if prepared.params.logprobs is not None:
            logprobs = {"content": self.logprob_entries(out.token_ids, out.logprobs, out.stop_reason)}
        return ChatChoice(index=index, message=message, logprobs=logprobs, finish_reason=finish)

    # ---- streaming -----------------------------------------------------------------------------------------
    async def stream(
        self, request: ChatCompletionRequest, prepared: PreparedChat, generation: Generation
    ) -> AsyncIterator[str]:
        chunk_id, created = completion_id("chatcmpl"), now()
        states = [
            _ChoiceState(
                ReasoningParser(prepared.starts_in_reasoning), ToolCallParser() if prepared.parse_tools else None
            )
            for _ in range(prepared.n)
        ]

        def chunk(index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> str:
            choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            payload = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": request.model}
            return sse({**payload, "choices": [choice]})

        try:
            for index in range(prepared.n):
                yield chunk(index, {"role": "assistant", "content": ""})
            async for index, out in merge(generation.streams()):
                state = states[index]
                for event in self._deltas(index, state, out, prepared, chunk):
                    yield event
            if request.include_usage:
                usage = {
                    "prompt_tokens": len(prepared.prompt_token_ids),
                    "completion_tokens": sum(s.completion_tokens for s in states),
                    "total_tokens": len(prepared.prompt_token_ids) + sum(s.completion_tokens for s in states),
                    "prompt_tokens_details": {"cached_tokens": states[0].cached_tokens},
                }
                yield sse({"id": chunk_id, "object": "chat.completion.chunk", "created": created,
                           "model": request.model, "choices": [], "usage": usage})  # fmt: skip
        except Exception as exc:  # the stream has begun: end it with an error event, never hang
            yield error_event(exc)
        yield DONE

    def _deltas(
        self, index: int, state: _ChoiceState, out: RequestOutput, prepared: PreparedChat, chunk: Any
    ) -> list[str]:
        state.completion_tokens = out.completion_tokens
        state.cached_tokens = out.cached_tokens
        parts = [state.reasoning.feed(out.new_text)]
        if out.finished:
            parts.append(state.reasoning.finish())
        reasoning = "".join(p.reasoning for p in parts)
        content = "".join(p.content for p in parts)
        calls: list[ToolCallChunk] = []
        if state.tools is not None:
            tool_parts = [state.tools.feed(content)]
            if out.finished:
                tool_parts.append(state.tools.finish())
            content = "".join(p.content for p in tool_parts)
            calls = [c for p in tool_parts for c in p.tool_calls]
        state.saw_tool_call = state.saw_tool_call or bool(calls)
        logprobs = None
        if prepared.params.logprobs is not None and out.logprobs:
            stop = out.stop_reason if out.finished else None
            logprobs = {"content": self.logprob_entries(out.new_token_ids, out.logprobs, stop)}
        events = []
        delta: dict[str, Any] = {}
        if reasoning:
            delta["reasoning_content"] = reasoning
        if content:
            delta["content"] = content
        if calls:
            delta["tool_calls"] = [_call_delta(c) for c in calls]
        if delta or logprobs:
            events.append(chunk(index, delta, None, logprobs))
        if out.finished and out.finish_reason is not None:
            finish = out.finish_reason.value
            if state.saw_tool_call and out.finish_reason is FinishReason.STOP:
                finish = "tool_calls"
            events.append(chunk(index, {}, finish))
        return events


def _call_delta(call: ToolCallChunk) -> dict[str, Any]:
    if call.name is not None:
        return {"index": call.index, "id": call.id, "type": "function",
                "function": {"name": call.name, "arguments": call.arguments}}  # fmt: skip
    return {"index": call.index, "function": {"arguments": call.arguments}}
