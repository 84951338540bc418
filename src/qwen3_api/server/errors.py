"""Map the project's error hierarchy to HTTP responses, in one place."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from qwen3_api.errors import (
    EngineError,
    EngineOverloadedError,
    InvalidRequestError,
    ModelNotReadyError,
    Qwen3APIError,
)

logger = logging.getLogger(__name__)


def _native_body(exc: Qwen3APIError) -> dict[str, object]:
    """The original API's bodies: FastAPI-style validation details for bad input, `detail` strings otherwise."""
    if isinstance(exc, InvalidRequestError):
        loc = ["body", exc.param] if exc.param else ["body"]
        return {"detail": [{"loc": loc, "msg": exc.message, "type": "value_error"}]}
    if isinstance(exc, ModelNotReadyError):
        return {"detail": "Model or tokenizer not loaded"}
    if isinstance(exc, EngineError):
        return {"detail": f"Generation failed: {exc}"}
    return {"detail": str(exc)}


def status_of(exc: Qwen3APIError, native: bool) -> int:
    """HTTP status for an error: the original API answers bad input with 422, the OpenAI API with 400."""
    if isinstance(exc, InvalidRequestError):
        return 422 if native else 400
    if isinstance(exc, (ModelNotReadyError, EngineOverloadedError)):
        return 503
    return 500


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, Qwen3APIError):  # registered only for Qwen3APIError; kept total for type checkers
        exc = EngineError(str(exc))
    status = status_of(exc, native=not request.url.path.startswith("/v1"))
    if status >= 500:
        logger.warning("%s %s -> %d: %s", request.method, request.url.path, status, exc)
    headers = {"Retry-After": "1"} if isinstance(exc, EngineOverloadedError) else None
    return JSONResponse(_native_body(exc), status_code=status, headers=headers)


def _clean_validation_error(error: dict[str, object]) -> dict[str, object]:
    """A validation error without the offending input echoed back: it may be NaN/Infinity, which JSON cannot carry."""
    cleaned = {k: v for k, v in error.items() if k not in ("input", "ctx", "url")}
    if isinstance(error.get("ctx"), dict):
        cleaned["ctx"] = {k: str(v) for k, v in error["ctx"].items()}  # type: ignore[union-attr]
    return cleaned


async def _handle_validation(request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return JSONResponse({"detail": [_clean_validation_error(dict(e)) for e in errors]}, status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    """Register the single mapping from our errors (and request validation errors) to responses."""
    app.add_exception_handler(Qwen3APIError, _handle)
    app.add_exception_handler(RequestValidationError, _handle_validation)
