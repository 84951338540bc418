"""Routes of the OpenAI-compatible API, plus /tokenize and /detokenize."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from qwen3_api.engine.async_engine import AsyncEngine
from qwen3_api.engine.structured import StructuredOutput
from qwen3_api.errors import InvalidRequestError
from qwen3_api.server.admission import Admission, admission
from qwen3_api.server.cached_generation import open_generation
from qwen3_api.server.disconnect import until_disconnected
from qwen3_api.server.offload import prepare
from qwen3_api.server.openai.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    now,
)
from qwen3_api.server.openai.responses_protocol import ResponsesRequest
from qwen3_api.server.openai.responses_store import ResponseStore
from qwen3_api.server.openai.serving_chat import ChatServing, _template_messages
from qwen3_api.server.openai.serving_completions import CompletionServing
from qwen3_api.server.openai.serving_responses import ResponsesServing
from qwen3_api.server.state import ServerState, ready_engine, server_state

router = APIRouter()
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.get("/v1/models")
async def list_models(engine: Annotated[AsyncEngine, Depends(ready_engine)]) -> dict[str, Any]:
    card = {"id": engine.model_name, "object": "model", "created": now(), "owned_by": "qwen3-api",
            "max_model_len": engine.max_model_len}  # fmt: skip
    return {"object": "list", "data": [card]}


async def _respond(
    serving: ChatServing | CompletionServing | ResponsesServing, body: Any, request: Request, admit: Admission
) -> Any:
    """Prepare (all validation happens here, before any byte is sent), admit (503 when full), then stream or answer.

    Preparing (templating, tokenizing, building the grammar) of a long request runs in a worker thread: it never
    stalls the event loop, and with it every other stream. A Responses request may continue a stored
    conversation of any length behind a short body, so it always does.
    """
    prepared: Any
    if isinstance(serving, ResponsesServing):
        prepared = await asyncio.to_thread(serving.prepare, body)
    else:
        prepared = await prepare(request, lambda: serving.prepare(body))
    for grammar in serving.grammars(prepared):  # type: ignore[arg-type]
        await compile_grammar(serving.engine, grammar, serving.settings.grammar_compile_timeout)
    admit.admit(serving.num_sequences(prepared))  # type: ignore[arg-type]
    jobs, shape = prepared.jobs, prepared.shape  # type: ignore[union-attr]
    generation = await open_generation(request, serving.engine, serving.route, jobs, shape=shape)
    if body.stream:
        stream = serving.stream(body, prepared, generation)  # type: ignore[arg-type]
        return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)
    return await until_disconnected(request, serving.complete(body, prepared, generation))  # type: ignore[arg-type]


async def compile_grammar(engine: AsyncEngine, grammar: StructuredOutput, timeout: float) -> None:
    """Compile a request's grammar in a worker thread, waiting at most `timeout` seconds (then 400)."""
    try:
        await asyncio.wait_for(asyncio.to_thread(engine.compile_grammar, grammar), timeout)
    except TimeoutError:
        param = "tools" if grammar.kind == "tool_calls" else "response_format"
        raise InvalidRequestError(
            f"the structured-output grammar did not compile within {timeout:g} s (the server's "
            "--grammar-compile-timeout); simplify the schema",
            param,
        ) from None


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    engine: Annotated[AsyncEngine, Depends(ready_engine)],
    state: Annotated[ServerState, Depends(server_state)],
    admit: Annotated[Admission, Depends(admission)],
) -> ChatCompletion | StreamingResponse:
    return await _respond(ChatServing(engine, state.settings), body, request, admit)  # type: ignore[no-any-return]


@router.post("/v1/completions", response_model=None)
async def completions(
    body: CompletionRequest,
    request: Request,
    engine: Annotated[AsyncEngine, Depends(ready_engine)],
    state: Annotated[ServerState, Depends(server_state)],
    admit: Annotated[Admission, Depends(admission)],
) -> Completion | StreamingResponse:
    return await _respond(CompletionServing(engine, state.settings), body, request, admit)  # type: ignore[no-any-return]


async def response_store(request: Request) -> ResponseStore:
    """Dependency: the app's store of responses (created on first use, sized by --responses-store-size)."""
    app_state = request.app.state
    if getattr(app_state, "responses_store", None) is None:
        app_state.responses_store = ResponseStore(request.app.state.server.settings.responses_store_size)
    store: ResponseStore = app_state.responses_store
    return store


@router.post("/v1/responses", response_model=None)
async def create_response(
    body: ResponsesRequest,
    request: Request,
    engine: Annotated[AsyncEngine, Depends(ready_engine)],
    state: Annotated[ServerState, Depends(server_state)],
    store: Annotated[ResponseStore, Depends(response_store)],
    admit: Annotated[Admission, Depends(admission)],
) -> dict[str, Any] | StreamingResponse:
    return await _respond(ResponsesServing(engine, state.settings, store), body, request, admit)  # type: ignore[no-any-return]


@router.get("/v1/responses/{response_id}")
async def retrieve_response(
    response_id: str, store: Annotated[ResponseStore, Depends(response_store)]
) -> dict[str, Any]:
    return store.get(response_id).response


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, store: Annotated[ResponseStore, Depends(response_store)]) -> dict[str, Any]:
    store.delete(response_id)
    return {"id": response_id, "object": "response", "deleted": True}


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, engine: Annotated[AsyncEngine, Depends(ready_engine)]) -> dict[str, Any]:
    tokenizer = engine.tokenizer

    def tokens_of_body() -> list[int]:
        if body.prompt is not None:
            return tokenizer.encode(body.prompt)
        tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None
        text = tokenizer.render_chat(
            _template_messages(body.messages or []), tools=tools, enable_thinking=body.enable_thinking,
            add_generation_prompt=body.add_generation_prompt,
        )  # fmt: skip
        return tokenizer.encode(text)

    tokens = await asyncio.to_thread(tokens_of_body)  # off the event loop, like every prompt
    return {"tokens": tokens, "count": len(tokens), "max_model_len": engine.max_model_len}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, engine: Annotated[AsyncEngine, Depends(ready_engine)]) -> dict[str, Any]:
    if min(body.tokens) < 0 or max(body.tokens) >= engine.tokenizer.vocab_size:
        raise InvalidRequestError(f"token ids must be in [0, {engine.tokenizer.vocab_size})", "tokens")
    return {"prompt": engine.tokenizer.decode(body.tokens, skip_special_tokens=False)}
