"""The original contract: GET /, GET /health, POST /generate."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from qwen3_api import __version__
from qwen3_api.chat.reasoning import prompt_opens_reasoning
from qwen3_api.engine.async_engine import AsyncEngine
from qwen3_api.engine.outputs import RequestOutput
from qwen3_api.engine.sampling import SamplingParams
from qwen3_api.engine.thinking import ThinkingBudget
from qwen3_api.errors import EngineDeadError, InvalidRequestError, ModelNotReadyError, ServerShuttingDownError
from qwen3_api.server.admission import Admission, admission
from qwen3_api.server.cached_generation import open_generation
from qwen3_api.server.disconnect import until_disconnected
from qwen3_api.server.errors import client_message
from qwen3_api.server.native_protocol import (
    GenerateRequest,
    GenerateResponse,
    GenerationParameters,
    HealthResponse,
    RootResponse,
)
from qwen3_api.server.offload import prepare
from qwen3_api.server.response_cache import GenerationJob
from qwen3_api.server.state import ServerState, ready_engine, server_state
from qwen3_api.server.streams import DONE, merge, sse

logger = logging.getLogger(__name__)
router = APIRouter()


@router.get("/", response_model=RootResponse)
async def root(state: Annotated[ServerState, Depends(server_state)]) -> RootResponse:
    return RootResponse(name="Qwen3-4B API", version=__version__, status="active", model=state.model_name)


@router.get("/health", response_model=HealthResponse, responses={503: {"description": "not ready, draining or dead"}})
async def health(state: Annotated[ServerState, Depends(server_state)]) -> HealthResponse:
    if state.shutting_down:
        raise ServerShuttingDownError()
    if state.engine is None:
        raise ModelNotReadyError("Model or tokenizer not loaded")
    state.engine.check_accepting()
    return HealthResponse(status="healthy")


@router.get("/live", responses={503: {"description": "the engine loop has died"}})
async def live(state: Annotated[ServerState, Depends(server_state)]) -> dict[str, str]:
    """Liveness: 200 while the process and its engine thread run (also while loading and draining)."""
    if state.engine is not None and not state.engine.is_alive:
        raise EngineDeadError(f"the engine stopped ({state.engine.death_reason}); the server is restarting")
    return {"status": "alive"}


def to_sampling_params(request: GenerateRequest, thinking: ThinkingBudget | None = None) -> SamplingParams:
    """The one translation of a /generate request into engine sampling parameters."""
    return SamplingParams(
        max_tokens=request.max_length,
        temperature=request.temperature,
        top_p=request.top_p,
        top_k=request.top_k,
        seed=request.seed,
        ignore_eos=request.ignore_eos,
        thinking=thinking,
    )


def _prompt_and_budget(engine: AsyncEngine, request: GenerateRequest) -> tuple[list[int], ThinkingBudget | None]:
    """The prompt's token ids and the thinking budget (a budget turns thinking on for a plain prompt)."""
    thinking = request.thinking_budget is not None
    prompt_ids = engine.tokenizer.prompt_token_ids(request.prompt, raw=request.raw, enable_thinking=thinking)
    if request.thinking_budget is None:
        return prompt_ids, None
    markers = engine.tokenizer.think_token_ids
    if markers is None:
        raise InvalidRequestError("this model's vocabulary has no <think> and </think> tokens", "thinking_budget")
    text = engine.tokenizer.decode(prompt_ids, skip_special_tokens=False)
    return prompt_ids, ThinkingBudget(request.thinking_budget, *markers, starts_open=prompt_opens_reasoning(text))


async def _stream_events(streams: list[AsyncIterator[RequestOutput]]) -> AsyncIterator[str]:
    """SSE: {"index", "text"} deltas, then per sequence {"index", "finish_reason", token counts}, then [DONE]."""
    try:
        async for index, out in merge(streams):
            if out.new_text:
                yield sse({"index": index, "text": out.new_text})
            if out.finished and out.finish_reason is not None:
                yield sse({"index": index, "finish_reason": out.finish_reason.value,
                           "prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens})  # fmt: skip
    except Exception as exc:  # the stream has begun: end it with an error event, never hang
        yield sse({"error": client_message(exc)})
    yield DONE


@router.post("/generate", response_model=None, responses={200: {"model": GenerateResponse}})
async def generate(
    request: GenerateRequest,
    http_request: Request,
    engine: Annotated[AsyncEngine, Depends(ready_engine)],
    state: Annotated[ServerState, Depends(server_state)],
    admit: Annotated[Admission, Depends(admission)],
) -> GenerateResponse | StreamingResponse:
    cap = state.settings.max_num_return_sequences
    if request.num_return_sequences > cap:
        raise InvalidRequestError(
            f"num_return_sequences must be at most {cap} (the server's --max-num-return-sequences)",
            "num_return_sequences",
        )
    # Templating and tokenizing a long prompt take a while: off the event loop, so other streams go on.
    prompt_ids, thinking = await prepare(http_request, lambda: _prompt_and_budget(engine, request))
    params = to_sampling_params(request, thinking)
    n = request.num_return_sequences
    engine.check_request(prompt_ids, params, "max_length")
    admit.admit(n)  # 503 now, before any byte of a stream is sent
    jobs = [GenerationJob(prompt_ids, params, n)]
    generation = await open_generation(http_request, engine, "generate", jobs, "max_length")
    if request.stream:
        return StreamingResponse(_stream_events(generation.streams()), media_type="text/event-stream")
    outputs = await until_disconnected(http_request, generation.outputs())
    return GenerateResponse(generated_texts=[o.text for o in outputs], parameters=used_parameters(request, params))


def used_parameters(request: GenerateRequest, params: SamplingParams) -> GenerationParameters:
    """The six echoed parameters, read from the sampling parameters the engine ran with (defaults filled in)."""
    return GenerationParameters(
        prompt=request.prompt,
        max_length=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        num_return_sequences=request.num_return_sequences,
    )
