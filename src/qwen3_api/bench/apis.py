"""The request bodies and streamed events of each API the load generator speaks.

Servers differ in how they let a client ignore end tokens: vLLM, SGLang and ours take `ignore_eos`, while
`transformers serve` rejects unknown fields (422) but takes a per-request `generation_config` JSON in which
`eos_token_id: -1` disables stopping. Each API therefore lists request styles, best first; the load generator
probes them with its warm-up request and keeps the first one the server accepts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class ApiKind(str, Enum):
    """Which API to drive."""

    OPENAI_COMPLETIONS = "openai-completions"
    OPENAI_CHAT = "openai-chat"
    NATIVE = "native"


@dataclass(frozen=True)
class RequestStyle:
    """One way of shaping requests: streaming or not, and fields merged into every body."""

    stream: bool
    extra: dict[str, Any] = field(default_factory=dict)
    ignores_eos: bool = False
    description: str = ""


@dataclass(frozen=True)
class StreamEvent:
    """What one `data:` event of a stream carried."""

    text: str = ""
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class FullResponse:
    """What a non-streaming response carried."""

    text: str
    completion_tokens: int | None = None
    prompt_tokens: int | None = None


def _usage(data: dict[str, Any]) -> tuple[int | None, int | None]:
    usage = data.get("usage") or {}
    return usage.get("completion_tokens"), usage.get("prompt_tokens")


def _error_text(data: dict[str, Any]) -> str | None:
    error = data.get("error")
    if error is None:
        return None
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)


class Api:
    """An API's path, health check, request bodies and response parsing."""

    kind: ApiKind
    path: str
    health_paths: tuple[str, ...]

    def __init__(self, model: str | None, temperature: float = 0.0) -> None:
        self.model = model
        self.temperature = temperature

    def styles(self, ignore_eos: bool) -> list[RequestStyle]:
        """Candidate request styles, best first."""
        raise NotImplementedError

    def body(self, prompt: str, max_tokens: int, style: RequestStyle) -> dict[str, Any]:
        raise NotImplementedError

    def parse_event(self, data: dict[str, Any]) -> StreamEvent:
        raise NotImplementedError

    def parse_full(self, data: dict[str, Any]) -> FullResponse:
        raise NotImplementedError


class _OpenAIBase(Api):
    health_paths = ("/v1/models", "/health")

    def styles(self, ignore_eos: bool) -> list[RequestStyle]:
        usage = {"stream_options": {"include_usage": True}}
        plain = [
            RequestStyle(True, usage, False, "streaming"),
            RequestStyle(True, {}, False, "streaming without stream_options"),
        ]
        if not ignore_eos:
            return plain
        # transformers serve: a generation_config JSON replaces the model's; -1 matches no token.
        hf_config = json.dumps({"eos_token_id": -1, "do_sample": False})
        return [
            RequestStyle(True, {**usage, "ignore_eos": True}, True, "streaming, ignore_eos"),
            RequestStyle(
                True, {**usage, "generation_config": hf_config}, True, "streaming, generation_config eos -1"
            ),
            *plain,
        ]

    def _common(self, max_tokens: int, style: RequestStyle) -> dict[str, Any]:
        body: dict[str, Any] = {
            "max_tokens": max_tokens,
            "temperature": self.temperature,
            "stream": style.stream,
        }
        if self.model is not None:
            body["model"] = self.model
        return {**body, **style.extra}


class OpenAICompletionsApi(_OpenAIBase):
    """POST /v1/completions, streamed: `choices[0].text` deltas, usage in a final chunk."""

    kind = ApiKind.OPENAI_COMPLETIONS
    path = "/v1/completions"

    def body(self, prompt: str, max_tokens: int, style: RequestStyle) -> dict[str, Any]:
        return {"prompt": prompt, **self._common(max_tokens, style)}

    def parse_event(self, data: dict[str, Any]) -> StreamEvent:
        choices = data.get("choices") or []
        text = (choices[0].get("text") or "") if choices else ""
        completion, prompt = _usage(data)
        return StreamEvent(text, completion, prompt, _error_text(data))

    def parse_full(self, data: dict[str, Any]) -> FullResponse:
        completion, prompt = _usage(data)
        return FullResponse(data["choices"][0].get("text") or "", completion, prompt)


class OpenAIChatApi(_OpenAIBase):
    """POST /v1/chat/completions, streamed: `choices[0].delta` content (or reasoning) deltas."""

    kind = ApiKind.OPENAI_CHAT
    path = "/v1/chat/completions"

    def body(self, prompt: str, max_tokens: int, style: RequestStyle) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": prompt}], **self._common(max_tokens, style)}

    def parse_event(self, data: dict[str, Any]) -> StreamEvent:
        choices = data.get("choices") or []
        delta = (choices[0].get("delta") or {}) if choices else {}
        text = "".join(delta.get(k) or "" for k in ("reasoning_content", "reasoning", "content"))
        completion, prompt = _usage(data)
        return StreamEvent(text, completion, prompt, _error_text(data))

    def parse_full(self, data: dict[str, Any]) -> FullResponse:
        completion, prompt = _usage(data)
        message = data["choices"][0].get("message") or {}
        return FullResponse(message.get("content") or "", completion, prompt)


class NativeApi(Api):
    """Our POST /generate: streamed `{"index", "text"}` events and a final event with token counts,
    or the original non-streaming `{"generated_texts": [...]}`."""

    kind = ApiKind.NATIVE
    path = "/generate"
    health_paths = ("/health",)

    def styles(self, ignore_eos: bool) -> list[RequestStyle]:
        eos = {"ignore_eos": True} if ignore_eos else {}
        candidates = [
            RequestStyle(True, eos, ignore_eos, "streaming" + (", ignore_eos" if ignore_eos else "")),
            RequestStyle(False, eos, ignore_eos, "non-streaming" + (", ignore_eos" if ignore_eos else "")),
        ]
        if ignore_eos:
            candidates.insert(1, RequestStyle(True, {}, False, "streaming"))
            candidates.append(RequestStyle(False, {}, False, "non-streaming"))
        return candidates

    def body(self, prompt: str, max_tokens: int, style: RequestStyle) -> dict[str, Any]:
        # The request model is strict: temperature must be a JSON float, and `stream` is only sent when used.
        body: dict[str, Any] = {
            "prompt": prompt,
            "max_length": max_tokens,
            "temperature": float(self.temperature),
        }
        body["raw"] = True
        if style.stream:
            body["stream"] = True
        return {**body, **style.extra}

    def parse_event(self, data: dict[str, Any]) -> StreamEvent:
        return StreamEvent(
            data.get("text") or "",
            data.get("completion_tokens"),
            data.get("prompt_tokens"),
            _error_text(data),
        )

    def parse_full(self, data: dict[str, Any]) -> FullResponse:
        texts = data.get("generated_texts") or [""]
        return FullResponse(texts[0])


def make_api(kind: ApiKind | str, model: str | None, temperature: float = 0.0) -> Api:
    """The `Api` for `kind`."""
    classes: dict[ApiKind, type[Api]] = {
        ApiKind.OPENAI_COMPLETIONS: OpenAICompletionsApi,
        ApiKind.OPENAI_CHAT: OpenAIChatApi,
        ApiKind.NATIVE: NativeApi,
    }
    return classes[ApiKind(kind)](model, temperature)
