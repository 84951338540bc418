"""Request and response models of the original API (`/`, `/health`, `/generate`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from qwen3_api.server import limits


class GenerateRequest(BaseModel):
    """POST /generate. `max_length` counts generated tokens only (not the prompt)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    prompt: str = Field(..., description="plain text (rendered as one user message) or ChatML used verbatim")
    max_length: int = Field(512, ge=1, description="maximum number of generated tokens")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="0 means greedy")
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    top_k: int = Field(50, ge=0, description="0 disables top-k")
    num_return_sequences: int = Field(1, ge=1)
    raw: bool = Field(False, description="use the prompt verbatim, without the chat template")
    stream: bool = Field(False, description="stream server-sent events of text deltas")
    seed: int | None = Field(
        None, ge=0, le=limits.MAX_SEED, description="makes sampling reproducible; sequence i uses seed + i"
    )
    ignore_eos: bool = Field(False, description="keep generating past end tokens (benchmarks)")
    thinking_budget: int | None = Field(
        None, ge=0, description="Qwen3 thinking on, and the thought ended after this many tokens (README)"
    )

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        return limits.check_valid_unicode(data)

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must not be empty")
        return value


class GenerationParameters(BaseModel):
    """The six parameters as actually used, defaults filled in."""

    prompt: str
    max_length: int
    temperature: float
    top_p: float
    top_k: int
    num_return_sequences: int


class GenerateResponse(BaseModel):
    generated_texts: list[str]
    parameters: GenerationParameters


class RootResponse(BaseModel):
    name: str
    version: str
    status: str
    model: str


class HealthResponse(BaseModel):
    status: str
