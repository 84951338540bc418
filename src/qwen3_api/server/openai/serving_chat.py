"""POST /v1/chat/completions: prompt rendering, Qwen3 thinking and tool calls, streamed and not."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qwen3_api.chat.reasoning import ReasoningParser, prompt_opens_reasoning
from qwen3_api.chat.tools import ToolCallChunk, ToolCallParser
from qwen3_api.engine.outputs import FinishReason, RequestOutput
from qwen3_api.engine.sampling import SamplingParams
from qwen3_api.engine.structured import StructuredOutput
from qwen3_api.engine.thinking import ThinkingBudget
from qwen3_api.errors import InvalidRequestError
from qwen3_api.server.openai.params import (
    NON_THINKING_DEFAULTS,
    THINKING_DEFAULTS,
    SamplingDefaults,
    thinking_budget_of,
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
from qwen3_api.server.openai.serving import OpenAIServing, error_event, generation_defaults, log_user, usage_of
from qwen3_api.server.response_cache import GenerationJob
from qwen3_api.server.streams import DONE, merge, sse

if TYPE_CHECKING:
    from qwen3_api.engine.async_engine import FinalOutput
    from qwen3_api.server.cached_generation import Generation

EMPTY_THINK_BLOCK = "<think>\n\n</think>\n\n"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedChat:
    """Everything decided before generation starts (errors surface here, before any byte is streamed)."""

    prompt_token_ids: list[int]
    params: SamplingParams
    n: int
    starts_in_reasoning: bool
    parse_tools: bool
    max_tool_calls: int | None = None  # 1 with parallel_tool_calls false: later calls are dropped

    @property
    def jobs(self) -> list[GenerationJob]:
        return [GenerationJob(self.prompt_token_ids, self.params, self.n)]

    @property
    def shape(self) -> dict[str, Any]:
        """What changes the formatting beyond the prompt and parameters (for the response cache key)."""
        return {"starts_in_reasoning": self.starts_in_reasoning, "parse_tools": self.parse_tools}


@dataclass
class ChoiceState:
    """One streamed choice's parsers and counts."""

    reasoning: ReasoningParser
    tools: ToolCallParser | None
    saw_tool_call: bool = False
    completion_tokens: int = 0
    cached_tokens: int = 0
    logprobs: list[dict[str, Any]] = field(default_factory=list)

    max_tool_calls: int | None = None

    @classmethod
    def of(cls, prepared: PreparedChat) -> ChoiceState:
        tools = ToolCallParser() if prepared.parse_tools else None
        return cls(ReasoningParser(prepared.starts_in_reasoning), tools, max_tool_calls=prepared.max_tool_calls)


@dataclass(frozen=True)
class ChoiceDelta:
    """What one engine output adds to a streamed choice: reasoning text, content text, tool-call chunks."""

    reasoning: str
    content: str
    tool_calls: list[ToolCallChunk]


def parse_delta(state: ChoiceState, out: RequestOutput) -> ChoiceDelta:
    """Feed one engine output through the choice's reasoning and tool-call parsers (shared by chat and Responses)."""
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
        if state.max_tool_calls is not None:
            calls = [c for c in calls if c.index < state.max_tool_calls]
    state.saw_tool_call = state.saw_tool_call or bool(calls)
    return ChoiceDelta(reasoning, content, calls)


def log_invalid_tool_calls(response_id: str, count: int) -> None:
    """Say so when `<tool_call>` blocks were not valid calls and went back into the content as written."""
    if count:
        logger.warning("request %s: %d invalid <tool_call> block(s) returned as content text", response_id, count)


def _template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as the chat template expects them (developer = system; text parts joined into one string, as
    Qwen's templates render only string content; tool call arguments as objects)."""
    rendered = []
    for message in messages:
        entry = message.model_dump(exclude_none=True)
        if entry["role"] == "developer":
            entry["role"] = "system"
        if isinstance(entry.get("content"), list):
            entry["content"] = "".join(part["text"] for part in entry["content"])
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
        self._check_strict(request, tool_choice)
        structured = self._structured(request, tool_choice)
        thinking, budget = self._thinking(request, structured)
        tools = [t.model_dump(exclude_none=True) for t in request.tools or []] if tool_choice != "none" else None
        # chat_template_kwargs holds only enable_thinking (protocol validation): nothing else reaches the template.
        prompt = tokenizer.render_chat(_template_messages(request.messages), tools=tools, enable_thinking=thinking)
        opens_reasoning = prompt_opens_reasoning(prompt)
        if opens_reasoning and (structured is not None or thinking is False):
            # A template that always opens the thought (Thinking-2507) gets it closed empty, as thinking off does
            # elsewhere: the answer, or the grammar, starts at the first token.
            prompt, opens_reasoning = prompt.rstrip("\n") + "\n\n</think>\n\n", False
        prompt_ids = tokenizer.encode(prompt)
        thinking_mode = tokenizer.supports_thinking and thinking is not False and not prompt.endswith(EMPTY_THINK_BLOCK)
        defaults = self._defaults(thinking_mode)
        max_tokens = request.max_completion_tokens or request.max_tokens or self.remaining_tokens(prompt_ids)
        logprobs = (request.top_logprobs or 0) if request.logprobs else None
        params = to_sampling_params(
            request, max_tokens=max_tokens, defaults=defaults, logprobs=logprobs, structured=structured,
            thinking=self._thinking_budget(budget, opens_reasoning, _budget_param(request)),
        )  # fmt: skip
        param = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
        self.engine.check_request(prompt_ids, params, param)
        return PreparedChat(
            prompt_ids, params, request.n, opens_reasoning, tools is not None,
            max_tool_calls=None if request.parallel_tool_calls else 1,
        )  # fmt: skip

    def _thinking(
        self, request: ChatCompletionRequest, structured: StructuredOutput | None
    ) -> tuple[bool | None, int | None]:
        """(enable_thinking for the template, thinking budget in tokens) of a request, checked for conflicts."""
        thinking = request.thinking_requested
        budget = thinking_budget_of(request.thinking_budget, request.reasoning_effort)
        if budget is not None and thinking is False:
            raise InvalidRequestError(
                "a thinking budget needs thinking on, but enable_thinking is false", _budget_param(request)
            )
        if structured is not None and budget is not None:
            raise InvalidRequestError(
                "a thinking budget cannot be combined with response_format json or forced tool calls: the grammar "
                "starts at the first token",
                _budget_param(request),
            )
        if structured is not None and self.engine.tokenizer.supports_thinking:
            if thinking:
                raise InvalidRequestError(
                    "enable_thinking cannot be combined with response_format json or forced tool calls: the "
                    "grammar starts at the first token",
                    "enable_thinking",
                )
            thinking = False
        return thinking, budget

    def _thinking_budget(self, budget: int | None, starts_open: bool, param: str) -> ThinkingBudget | None:
        """The engine's thinking budget for `budget` tokens (None: no budget)."""
        if budget is None:
            return None
        markers = self.engine.tokenizer.think_token_ids
        if markers is None:
            raise InvalidRequestError("this model's vocabulary has no <think> and </think> tokens", param)
        return ThinkingBudget(budget, markers[0], markers[1], starts_open=starts_open)

    @staticmethod
    def _check_strict(request: ChatCompletionRequest, tool_choice: object) -> None:
        """`strict: true` on a function is kept only where the grammar enforces it: a forced call."""
        if tool_choice != "auto":
            return  # none: no call can be made; required / named: the grammar holds every call to its schema
        for index, tool in enumerate(request.tools or []):
            if tool.function.strict:
                raise InvalidRequestError(
                    f"tools[{index}] ({tool.function.name}) has strict: true, which this server enforces only on "
                    "forced calls (tool_choice 'required' or a named function), where the grammar holds the "
                    "arguments to the schema; with tool_choice 'auto' set strict to false or leave it out",
                    "tools",
                )

    @staticmethod
    def grammars(prepared: PreparedChat) -> list[StructuredOutput]:
        """The grammars to compile before the request is queued."""
        return [prepared.params.structured] if prepared.params.structured is not None else []

    @staticmethod
    def num_sequences(prepared: PreparedChat) -> int:
        """Engine sequences the request takes (its admission cost)."""
        return prepared.n

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
        response_id = completion_id("chatcmpl")
        log_user(response_id, request.user)
        outputs = await generation.outputs()
        choices = [self.choice(i, out, prepared, response_id) for i, out in enumerate(outputs)]
        return ChatCompletion(
            id=response_id,
            created=now(),
            model=request.model,
            choices=choices,
            usage=usage_of(len(prepared.prompt_token_ids), outputs),
        )

    def choice(self, index: int, out: FinalOutput, prepared: PreparedChat, response_id: str = "") -> ChatChoice:
        """One finished output as a chat choice: reasoning, content and tool calls split out."""
        reasoning, content = ReasoningParser(prepared.starts_in_reasoning).split(out.text)
        calls = []
        if prepared.parse_tools:
            parser = ToolCallParser()
            content, parsed = parser.parse(content)
            log_invalid_tool_calls(response_id, parser.invalid_blocks)
            parsed = parsed[: prepared.max_tool_calls]
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
        log_user(chunk_id, request.user)
        states = [ChoiceState.of(prepared) for _ in range(prepared.n)]

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
            for state in states:
                log_invalid_tool_calls(chunk_id, state.tools.invalid_blocks if state.tools else 0)
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
        self, index: int, state: ChoiceState, out: RequestOutput, prepared: PreparedChat, chunk: Any
    ) -> list[str]:
        parsed = parse_delta(state, out)
        reasoning, content, calls = parsed.reasoning, parsed.content, parsed.tool_calls
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


def _budget_param(request: ChatCompletionRequest) -> str:
    return "reasoning_effort" if request.reasoning_effort is not None else "thinking_budget"


def _call_delta(call: ToolCallChunk) -> dict[str, Any]:
    if call.name is not None:
        return {"index": call.index, "id": call.id, "type": "function",
                "function": {"name": call.name, "arguments": call.arguments}}  # fmt: skip
    return {"index": call.index, "function": {"arguments": call.arguments}}
