"""The original contract: GET /, GET /health, POST /generate."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from qwen3_api import __version__
from qwen3_api.engine.async_engine import AsyncEngine
from qwen3_api.engine.outputs import RequestOutput
from qwen3_api.engine.sampling import SamplingParams
from qwen3_api.errors import EngineError, InvalidRequestError, ModelNotReadyError, Qwen3APIError
from qwen3_api.server.cached_generation import open_generation
from qwen3_api.server.disconnect import until_disconnected
from qwen3_api.server.native_protocol import (
    GenerateRequest,
    GenerateResponse,
    GenerationParameters,
    HealthResponse,
    RootResponse,
)
from qwen3_api.server.response_cache import GenerationJob
from qwen3_api.server.state import ServerState, ready_engine, server_state
from qwen3_api.server.streams import DONE, merge, sse

logger = logging.getLogger(__name__)
router = APIRouter()


@router.get("/", response_model=RootResponse)
async def root(state: Annotated[ServerState, Depends(server_state)]) -> RootResponse:
    return RootResponse(name="Qwen3-4B API", version=__version__, status="active", model=state.model_name)


@router.get("/health", response_model=HealthResponse, responses={503: {"description": "model not loaded"}})
async def health(state: Annotated[ServerState, Depends(server_state)]) -> HealthResponse:
    if state.engine is None:
        raise ModelNotReadyError("Model or tokenizer not loaded")
    return HealthResponse(status="healthy")


def to_sampling_params(request: GenerateRequest) -> SamplingParams:
    """The one translation of a /generate request into engine sampling parameters."""
    return SamplingParams(
        max_tokens=request.max_length,
        temperature=request.temperature,
        top_p=request.top_p,
        top_k=request.top_k,
        seed=request.seed,
        ignore_eos=request.ignore_eos,
    )


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
        message = str(exc) if isinstance(exc, Qwen3APIError) else f"Generation failed: {exc}"
        yield sse({"error": message})
    yield DONE


@router.post("/generate", response_model=None, responses={200: {"model": GenerateResponse}})
async def generate(
    request: GenerateRequest,
    http_request: Request,
    engine: Annotated[AsyncEngine, Depends(ready_engine)],
    state: Annotated[ServerState, Depends(server_state)],
) -> GenerateResponse | StreamingResponse:
    cap = state.settings.max_num_return_sequences
    if request.num_return_sequences > cap:
        raise InvalidRequestError(
            f"num_return_sequences must be at most {cap} (the server's --max-num-return-sequences)",
            "num_return_sequences",
        )
    prompt_ids = engine.tokenizer.prompt_token_ids(request.prompt, raw=request.raw)
    params = to_sampling_params(request)
    engine.check_request(prompt_ids, params, "max_length")
    jobs = [GenerationJob(prompt_ids, params, request.num_return_sequences)]
    generation = await open_generation(http_request, engine, "generate", jobs, "max_length")
    if request.stream:
        return StreamingResponse(_stream_events(generation.streams()), media_type="text/event-stream")
    try:
        outputs = await until_disconnected(http_request, generation.outputs())
    except Qwen3APIError:
        raise
    except Exception as exc:
        logger.exception("generation failed")
        raise EngineError(str(exc) or type(exc).__name__) from exc
    return GenerateResponse(
        generated_texts=[o.text for o in outputs],
        parameters=GenerationParameters(**request.model_dump(include=set(GenerationParameters.model_fields))),
    )
