"""The original contract: GET /, GET /health, POST /generate."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends

from qwen3_api import __version__
from qwen3_api.engine.sampling import SamplingParams
from qwen3_api.errors import EngineError, InvalidRequestError, ModelNotReadyError, Qwen3APIError
from qwen3_api.server.native_protocol import (
    GenerateRequest,
    GenerateResponse,
    GenerationParameters,
    HealthResponse,
    RootResponse,
)
from qwen3_api.server.state import ServerState, ready_engine, server_state

if TYPE_CHECKING:
    from qwen3_api.engine.async_engine import AsyncEngine

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
    )


@router.post("/generate", response_model=GenerateResponse)
async def generate(
    request: GenerateRequest,
    engine: Annotated["AsyncEngine", Depends(ready_engine)],
    state: Annotated[ServerState, Depends(server_state)],
) -> GenerateResponse:
    cap = state.settings.max_num_return_sequences
    if request.num_return_sequences > cap:
        raise InvalidRequestError(
            f"num_return_sequences must be at most {cap} (the server's --max-num-return-sequences)",
            "num_return_sequences",
        )
    prompt_ids = engine.tokenizer.prompt_token_ids(request.prompt, raw=request.raw)
    params = to_sampling_params(request)
    try:
        outputs = await engine.generate_n(
            prompt_ids, params, request.num_return_sequences, max_tokens_param="max_length"
        )
    except* Qwen3APIError as group:
        raise group.exceptions[0] from None
    except* Exception as group:
        logger.exception("generation failed", exc_info=group.exceptions[0])
        raise EngineError(str(group.exceptions[0]) or type(group.exceptions[0]).__name__) from None
    return GenerateResponse(
        generated_texts=[o.text for o in outputs],
        parameters=GenerationParameters(**request.model_dump(exclude={"raw"})),
    )
