"""Request and response models of the OpenAI Responses API (`POST /v1/responses`).

Requests forbid unknown fields, as on chat completions: what this server does not support is answered with 400
naming it. Output objects are plain dicts built by `serving_responses`, shaped as OpenAI's (the official SDK
parses them).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, ValidationInfo, field_validator, model_validator

from qwen3_api.server.openai.protocol import _Request

Effort = Literal["none", "minimal", "low", "medium", "high"]


# ---- input items ------------------------------------------------------------------------------------------------
class InputText(_Request):
    type: Literal["input_text"]
    text: str


class OutputText(_Request):
    """Assistant text given back as input (an earlier response's output)."""

    type: Literal["output_text"]
    text: str
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class MessageItem(_Request):
    """A message: `content` as a string or text parts (input_text; output_text for assistant turns)."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: list[Annotated[InputText | OutputText, Field(discriminator="type")]]  # a string is one text part
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _string_is_one_part(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            kind = "output_text" if info.data.get("role") == "assistant" else "input_text"
            return [{"type": kind, "text": value}]
        return value

    @model_validator(mode="after")
    def _parts_fit_role(self) -> MessageItem:
        wanted = "output_text" if self.role == "assistant" else "input_text"
        for part in self.content:
            if part.type != wanted:
                raise ValueError(f"{self.role} message content parts must be {wanted}, got {part.type}")
        return self

    @property
    def text(self) -> str:
        return "".join(part.text for part in self.content)


class FunctionCallItem(_Request):
    """A call the model made, given back as input."""

    type: Literal["function_call"]
    call_id: str = Field(..., min_length=1)
    name: str = Field(..., min_length=1)
    arguments: str
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutputItem(_Request):
    """The result of a call, for the model to read."""

    type: Literal["function_call_output"]
    call_id: str = Field(..., min_length=1)
    output: str
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class ReasoningText(_Request):
    type: Literal["reasoning_text", "summary_text"]
    text: str


class ReasoningItem(_Request):
    """An earlier response's reasoning, given back as input: it becomes the next assistant turn's thinking."""

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[ReasoningText] = Field(default_factory=list)
    content: list[ReasoningText] | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    @property
    def text(self) -> str:
        return "".join(part.text for part in self.content or self.summary)


def _item_type(value: Any) -> str:
    # OpenAI's "easy" messages (`{"role", "content"}`) may leave out "type".
    found = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", "message")
    return str(found)


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")],
    Discriminator(_item_type),
]


# ---- tools, formats, reasoning ----------------------------------------------------------------------------------
class FunctionTool(_Request):
    type: Literal["function"]
    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionToolChoice(_Request):
    type: Literal["function"]
    name: str


class TextFormatText(_Request):
    type: Literal["text"]


class TextFormatJsonObject(_Request):
    type: Literal["json_object"]


class TextFormatJsonSchema(_Request):
    type: Literal["json_schema"]
    name: str = Field(..., min_length=1, max_length=64)
    schema_: dict[str, Any] = Field(..., alias="schema")
    description: str | None = None
    strict: bool | None = None


TextFormat = Annotated[TextFormatText | TextFormatJsonObject | TextFormatJsonSchema, Field(discriminator="type")]


class TextConfig(_Request):
    format: TextFormat | None = None


class ReasoningConfig(_Request):
    effort: Effort | None = None


# ---- the request ------------------------------------------------------------------------------------------------
class ResponsesRequest(_Request):
    """POST /v1/responses."""

    model: str = Field(..., min_length=1)
    input: list[InputItem]  # a string is one user message
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionToolChoice | None = None
    parallel_tool_calls: bool | None = None  # None: true, as OpenAI
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    metadata: dict[str, str] | None = None
    user: str | None = None
    stream: bool | None = False
    store: bool | None = None  # None: true, as OpenAI
    previous_response_id: str | None = None
    truncation: Literal["disabled"] | None = None

    @property
    def stored(self) -> bool:
        return self.store is not False

    @property
    def parallel_calls(self) -> bool:
        return self.parallel_tool_calls is not False

    @field_validator("input", mode="before")
    @classmethod
    def _input_items(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [{"type": "message", "role": "user", "content": value}]
        if isinstance(value, list) and not value:
            raise ValueError("input must not be empty")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        # OpenAI's limits: 16 pairs, keys up to 64 characters, values up to 512.
        if value is not None:
            if len(value) > 16:
                raise ValueError("metadata holds at most 16 key-value pairs")
            for key, item in value.items():
                if len(key) > 64 or len(item) > 512:
                    raise ValueError("metadata keys are at most 64 characters and values at most 512")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ResponsesRequest:
        forced = isinstance(self.tool_choice, FunctionToolChoice) or self.tool_choice == "required"
        if forced and not self.tools:
            raise ValueError("tool_choice 'required' or a named function needs tools")
        names = {tool.name for tool in self.tools or []}
        if isinstance(self.tool_choice, FunctionToolChoice) and self.tool_choice.name not in names:
            raise ValueError(f"tool_choice names {self.tool_choice.name!r}, which is not in tools")
        return self


def new_id(prefix: str) -> str:
    """An OpenAI-style object id: `resp_`, `msg_`, `fc_`, `rs_` and hex digits."""
    return f"{prefix}_{uuid.uuid4().hex}"
