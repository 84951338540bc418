"""Request models of the Anthropic Messages API (`/v1/messages`, `/v1/messages/count_tokens`).

Unknown fields are refused (400 naming them), as on the OpenAI routes. Accepted and used, beyond the obvious:
`cache_control` on the request, blocks and tools (our prefix cache is automatic: every prompt is a cache candidate),
`signature` of thinking blocks sent back in history (kept as is, not checked), `metadata.user_id` (logged).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class CacheControl(_Request):
    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextBlock(_Request):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None


class ThinkingBlock(_Request):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class ToolUseBlock(_Request):
    type: Literal["tool_use"]
    id: str = Field(..., min_length=1)
    name: str = Field(..., min_length=1)
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class ToolResultBlock(_Request):
    type: Literal["tool_result"]
    tool_use_id: str = Field(..., min_length=1)
    content: str | list[TextBlock] = ""
    is_error: bool = False
    cache_control: CacheControl | None = None

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "\n".join(b.text for b in self.content)


ContentBlock = Annotated[TextBlock | ThinkingBlock | ToolUseBlock | ToolResultBlock, Field(discriminator="type")]


class Message(_Request):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]

    def blocks(self) -> list[ContentBlock]:
        return [TextBlock(type="text", text=self.content)] if isinstance(self.content, str) else list(self.content)


class Tool(_Request):
    type: Literal["custom"] | None = None
    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    input_schema: dict[str, Any]
    cache_control: CacheControl | None = None

    @model_validator(mode="after")
    def _object_schema(self) -> Tool:
        if self.input_schema.get("type") != "object":
            raise ValueError(f"input_schema of tool {self.name!r} must have type 'object'")
        return self


class ToolChoiceAuto(_Request):
    type: Literal["auto"]
    disable_parallel_tool_use: bool = False


class ToolChoiceAny(_Request):
    type: Literal["any"]
    disable_parallel_tool_use: bool = False


class ToolChoiceTool(_Request):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool = False


class ToolChoiceNone(_Request):
    type: Literal["none"]


ToolChoice = Annotated[ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")]


class ThinkingEnabled(_Request):
    type: Literal["enabled"]
    budget_tokens: int = Field(..., ge=1)
    display: Literal["summarized", "omitted"] | None = None


class ThinkingAdaptive(_Request):
    """Thinking on without a budget: the model decides how long to think."""

    type: Literal["adaptive"]
    display: Literal["summarized", "omitted"] | None = None


class ThinkingDisabled(_Request):
    type: Literal["disabled"]


Thinking = Annotated[ThinkingEnabled | ThinkingAdaptive | ThinkingDisabled, Field(discriminator="type")]


class Metadata(_Request):
    user_id: str | None = Field(None, max_length=256)


class _Prompt(_Request):
    """What both routes take: the conversation, tools and thinking."""

    model: str = Field(..., min_length=1)
    messages: list[Message] = Field(..., min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    cache_control: CacheControl | None = None

    @model_validator(mode="after")
    def _consistent(self) -> _Prompt:
        names = {tool.name for tool in self.tools or []}
        if isinstance(self.tool_choice, ToolChoiceTool) and self.tool_choice.name not in names:
            raise ValueError(f"tool_choice names {self.tool_choice.name!r}, which is not in tools")
        if isinstance(self.tool_choice, ToolChoiceAny | ToolChoiceTool) and not names:
            raise ValueError("tool_choice 'any' or 'tool' needs tools")
        if self.thinking_on and isinstance(self.tool_choice, ToolChoiceAny | ToolChoiceTool):
            raise ValueError("thinking cannot be enabled when tool_choice forces tool use")
        if self.messages[-1].role == "assistant":
            raise ValueError("the last message must be a user message: assistant prefill is not supported")
        return self

    @property
    def thinking_on(self) -> bool:
        return isinstance(self.thinking, ThinkingEnabled | ThinkingAdaptive)

    @property
    def thinking_budget(self) -> int | None:
        return self.thinking.budget_tokens if isinstance(self.thinking, ThinkingEnabled) else None

    @property
    def omit_thinking(self) -> bool:
        """`display: omitted`: thinking blocks are sent empty (the thought still happens)."""
        return isinstance(self.thinking, ThinkingEnabled | ThinkingAdaptive) and self.thinking.display == "omitted"

    @property
    def system_text(self) -> str | None:
        if self.system is None or isinstance(self.system, str):
            return self.system or None
        return "\n".join(block.text for block in self.system) or None


class MessagesRequest(_Prompt):
    """POST /v1/messages."""

    max_tokens: int = Field(..., ge=1)
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    metadata: Metadata | None = None

    @model_validator(mode="after")
    def _budget_fits(self) -> MessagesRequest:
        if self.thinking_budget is not None and self.thinking_budget >= self.max_tokens:
            raise ValueError("thinking.budget_tokens must be less than max_tokens")
        return self


class CountTokensRequest(_Prompt):
    """POST /v1/messages/count_tokens."""
