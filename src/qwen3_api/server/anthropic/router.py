"""Routes of the Anthropic Messages API: POST /v1/messages and POST /v1/messages/count_tokens.

A plain APIRouter with no dependencies of its own beyond the engine: API keys (`x-api-key` or a bearer token)
are checked in front of every route by the app, so this router needs nothing to sit behind that check.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from qwen3_api.engine.async_engine import AsyncEngine
from qwen3_api.server.anthropic.protocol import CountTokensRequest, MessagesRequest
from qwen3_api.server.anthropic.serving import MessagesServing
from qwen3_api.server.disconnect import until_disconnected
from qwen3_api.server.state import ServerState, ready_engine, server_state

router = APIRouter()
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.post("/v1/messages", response_model=None)
async def messages(
    body: MessagesRequest,
    request: Request,
    engine: Annotated[AsyncEngine, Depends(ready_engine)],
    state: Annotated[ServerState, Depends(server_state)],
) -> dict[str, Any] | StreamingResponse:
    serving = MessagesServing(engine, state.settings)
    prepared = serving.prepare(body)  # all validation here, before any byte is sent
    if body.stream:
        return StreamingResponse(serving.stream(body, prepared), media_type="text/event-stream", headers=SSE_HEADERS)
    return await until_disconnected(request, serving.complete(body, prepared))  # type: ignore[no-any-return]


@router.post("/v1/messages/count_tokens")
async def count_tokens(
    body: CountTokensRequest,
    engine: Annotated[AsyncEngine, Depends(ready_engine)],
    state: Annotated[ServerState, Depends(server_state)],
) -> dict[str, int]:
    return {"input_tokens": MessagesServing(engine, state.settings).count_tokens(body)}
