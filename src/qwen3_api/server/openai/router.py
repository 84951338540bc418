"""Routes of the OpenAI-compatible API, plus /tokenize and /detokenize."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from qwen3_api.engine.async_engine import AsyncEngine
from qwen3_api.server.cached_generation import open_generation
from qwen3_api.server.disconnect import until_disconnected
from qwen3_api.server.openai.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    now,
)
from qwen3_api.server.openai.serving_chat import ChatServing, _template_messages
from qwen3_api.server.openai.serving_completions import CompletionServing
from qwen3_api.server.state import ServerState, ready_engine, server_state

router = APIRouter()
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.get("/v1/models")
async def list_models(engine: Annotated[AsyncEngine, Depends(ready_engine)]) -> dict[str, Any]:
    card = {"id": engine.model_name, "object": "model", "created": now(), "owned_by": "qwen3-api",
            "max_model_len": engine.max_model_len}  # fmt: skip
    return {"object": "list", "data": [card]}


async def _respond(serving: ChatServing | CompletionServing, body: Any, request: Request) -> Any:
    """Prepare (all validation happens here, before any byte is sent), then stream or answer at once."""
    prepared = serving.prepare(body)
    generation = await open_generation(request, serving.engine, serving.route, prepared.jobs, shape=prepared.shape)
    if body.stream:
        stream = serving.stream(body, prepared, generation)  # type: ignore[arg-type]
        return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)
    return await until_disconnected(request, serving.complete(body, prepared, generation))  # type: ignore[arg-type]


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    engine: Annotated[AsyncEngine, Depends(ready_engine)],
    state: Annotated[ServerState, Depends(server_state)],
) -> ChatCompletion | StreamingResponse:
    return await _respond(ChatServing(engine, state.settings), body, request)  # type: ignore[no-any-return]


@router.post("/v1/completions", response_model=None)
async def completions(
    body: CompletionRequest,
    request: Request,
    engine: Annotated[AsyncEngine, Depends(ready_engine)],
    state: Annotated[ServerState, Depends(server_state)],
) -> Completion | StreamingResponse:
    return await _respond(CompletionServing(engine, state.settings), body, request)  # type: ignore[no-any-return]


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, engine: Annotated[AsyncEngine, Depends(ready_engine)]) -> dict[str, Any]:
    tokenizer = engine.tokenizer
    if body.prompt is not None:
        tokens = tokenizer.encode(body.prompt)
    else:
        tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None
        text = tokenizer.render_chat(
            _template_messages(body.messages or []), tools=tools, enable_thinking=body.enable_thinking,
            add_generation_prompt=body.add_generation_prompt,
        )  # fmt: skip
        tokens = tokenizer.encode(text)
    return {"tokens": tokens, "count": len(tokens), "max_model_len": engine.max_model_len}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, engine: Annotated[AsyncEngine, Depends(ready_engine)]) -> dict[str, Any]:
    if min(body.tokens) < 0 or max(body.tokens) >= engine.tokenizer.vocab_size:
        from qwen3_api.errors import InvalidRequestError

        raise InvalidRequestError(f"token ids must be in [0, {engine.tokenizer.vocab_size})", "tokens")
    return {"prompt": engine.tokenizer.decode(body.tokens, skip_special_tokens=False)}
