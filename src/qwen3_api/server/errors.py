"""Map the project's error hierarchy to HTTP responses, in one place.

The original API answers bad input with 422 and FastAPI-style bodies; the OpenAI API (paths under /v1) answers
with 400 and OpenAI's error body `{"error": {"message", "type", "param", "code"}}`; the Anthropic Messages API
(paths under /v1/messages) with Anthropic's `{"type": "error", "error": {"type", "message"}}`.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from qwen3_api.errors import (
    AuthenticationError,
    ContextLengthExceededError,
    EngineDeadError,
    EngineError,
    EngineOverloadedError,
    InvalidRequestError,
    ModelNotFoundError,
    ModelNotReadyError,
    NotFoundError,
    Qwen3APIError,
    ReplicaFailedError,
    RequestTimeoutError,
    RequestTooLargeError,
    ServerShuttingDownError,
)
from qwen3_api.server.limits import InvalidTextError

logger = logging.getLogger(__name__)

# What a client learns of a failure inside the engine: the exception text (it may hold internals, such as local
# paths) goes to the server log only, under the request's id (the X-Request-Id response header).
GENERATION_FAILED = "Generation failed: internal error (the server log has the details under this request's id)"
INTERNAL_ERROR = "Internal server error (the server log has the details under this request's id)"


def _is_openai(path: str) -> bool:
    return path.startswith("/v1")


def _is_anthropic(path: str) -> bool:
    """Paths of the Anthropic Messages API, answered with Anthropic's error shape."""
    return path.startswith("/v1/messages")


def is_openai_path(request: Request) -> bool:
    return _is_openai(request.url.path)


def status_of(exc: Qwen3APIError, openai: bool) -> int:
    """HTTP status for one of our errors."""
    if isinstance(exc, (ModelNotFoundError, NotFoundError)):
        return 404
    if isinstance(exc, AuthenticationError):
        return 401
    if isinstance(exc, RequestTooLargeError):
        return 413
    if isinstance(exc, InvalidRequestError):
        return 400 if openai else 422
    if isinstance(exc, (ModelNotReadyError, EngineOverloadedError)):
        return 503
    if isinstance(exc, (ServerShuttingDownError, EngineDeadError, ReplicaFailedError)):
        return 503
    if isinstance(exc, RequestTimeoutError):
        return 504
    return 500


def openai_error_body(exc: Qwen3APIError) -> dict[str, Any]:
    """OpenAI's error body for one of our errors."""
    code: str | None = None
    kind = "server_error"
    param = getattr(exc, "param", None)
    message = str(exc)
    if isinstance(exc, ModelNotFoundError):
        kind, code = "invalid_request_error", "model_not_found"
    elif isinstance(exc, ContextLengthExceededError):
        kind, code = "invalid_request_error", "context_length_exceeded"
    elif isinstance(exc, InvalidRequestError):
        kind = "invalid_request_error"
    elif isinstance(exc, ModelNotReadyError):
        kind, message = "service_unavailable", "Model or tokenizer not loaded"
    elif isinstance(exc, EngineOverloadedError):
        kind = "service_unavailable"
    elif isinstance(exc, AuthenticationError):
        kind, code = "invalid_request_error", "invalid_api_key"
    elif isinstance(exc, RequestTooLargeError):
        kind, code = "invalid_request_error", "request_too_large"
    elif isinstance(exc, RequestTimeoutError):
        code = "timeout"
    elif isinstance(exc, (ServerShuttingDownError, EngineDeadError)):
        kind = "service_unavailable"
    elif isinstance(exc, EngineError):
        message = GENERATION_FAILED
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def is_anthropic_path(request: Request) -> bool:
    return _is_anthropic(request.url.path)


def anthropic_status_of(exc: Qwen3APIError) -> int:
    """As on the OpenAI routes, except overload: Anthropic answers that with 529 (overloaded_error)."""
    return 529 if isinstance(exc, EngineOverloadedError) else status_of(exc, openai=True)


# Anthropic's error types by HTTP status (its documented set).
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error",
}


def anthropic_error_body(exc: Qwen3APIError) -> dict[str, Any]:
    """Anthropic's error body `{"type": "error", "error": {"type", "message"}}` for one of our errors."""
    status = anthropic_status_of(exc)
    kind = ANTHROPIC_ERROR_TYPES.get(status, "api_error")
    message = openai_error_body(exc)["error"]["message"]
    return {"type": "error", "error": {"type": kind, "message": message}}


_UNION_BRANCHES = {"str", "int", "float", "bool", "list", "dict", "none"}


def _is_union_branch(part: object) -> bool:
    """A location part that names which member of a union pydantic tried (`str`, `list[...]`), not a field."""
    return isinstance(part, str) and (part in _UNION_BRANCHES or "[" in part)


def _anthropic_validation_body(errors: list[dict[str, Any]]) -> dict[str, Any]:
    # The deepest error is the most specific one (for `str | list[block]` content: the block, not "not a str").
    first = max(errors, key=lambda e: len(e.get("loc", ())), default=None) or {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body" and not _is_union_branch(p))
    if first.get("type") == "json_invalid":
        message = "The request body is not valid JSON"
    elif first.get("type") == "extra_forbidden":
        message = f"{where}: Extra inputs are not permitted (not supported by this server)"
    else:
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
    return {"type": "error", "error": {"type": "invalid_request_error", "message": message}}


def _native_body(exc: Qwen3APIError) -> dict[str, object]:
    if isinstance(exc, InvalidRequestError):
        loc = ["body", exc.param] if exc.param else ["body"]
        return {"detail": [{"loc": loc, "msg": exc.message, "type": "value_error"}]}
    if isinstance(exc, ModelNotReadyError):
        return {"detail": "Model or tokenizer not loaded"}
    if isinstance(exc, EngineError):
        return {"detail": GENERATION_FAILED}
    return {"detail": str(exc)}


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, Qwen3APIError):  # registered only for Qwen3APIError; kept total for type checkers
        exc = EngineError(str(exc))
    response = error_response(exc, request.url.path)
    if response.status_code >= 500:
        logger.warning("%s %s -> %d: %s", request.method, request.url.path, response.status_code, exc)
    return response


def error_response(exc: Qwen3APIError, path: str) -> JSONResponse:
    """The JSON response for one of our errors, in the shape of the API that `path` belongs to."""
    headers: dict[str, str] = {}
    if isinstance(exc, EngineOverloadedError):
        headers["Retry-After"] = "1"
    if isinstance(exc, AuthenticationError):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, RequestTooLargeError):
        headers["Connection"] = "close"  # the rest of the body is never read
    if _is_anthropic(path):
        return JSONResponse(anthropic_error_body(exc), status_code=anthropic_status_of(exc), headers=headers or None)
    openai = _is_openai(path)
    body = openai_error_body(exc) if openai else _native_body(exc)
    return JSONResponse(body, status_code=status_of(exc, openai), headers=headers or None)


def internal_error_response(path: str) -> JSONResponse:
    """A JSON 500 for an exception nobody expected: no exception text, no internals."""
    if _is_anthropic(path):
        body: dict[str, Any] = {"type": "error", "error": {"type": "api_error", "message": INTERNAL_ERROR}}
    elif _is_openai(path):
        body = {"error": {"message": INTERNAL_ERROR, "type": "server_error", "param": None,
                                          "code": None}}  # fmt: skip
    else:
        body = {"detail": INTERNAL_ERROR}
    return JSONResponse(body, status_code=500)


def client_safe(exc: BaseException) -> Qwen3APIError:
    """`exc` as one of our errors whose message may be shown to a client (anything foreign: generation failed)."""
    if isinstance(exc, Qwen3APIError):
        return exc
    return EngineError(f"{type(exc).__name__}: {exc}")


def _clean_validation_error(error: dict[str, Any]) -> dict[str, Any]:
    """A validation error without the offending input echoed back: it may be NaN/Infinity, which JSON cannot carry."""
    cleaned = {k: v for k, v in error.items() if k not in ("input", "ctx", "url")}
    if isinstance(error.get("ctx"), dict):
        cleaned["ctx"] = {k: str(v) for k, v in error["ctx"].items()}
    return cleaned


def _openai_validation_body(errors: list[dict[str, Any]]) -> dict[str, Any]:
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": "value_error"}
    path = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(path) or _param_of(first)
    if first.get("type") == "extra_forbidden":
        message = f"Unsupported parameter: '{param}' is not supported by this server"
    elif first.get("type") == "json_invalid":
        message = "The request body is not valid JSON"
    else:
        message = f"Invalid value for '{param}': {first.get('msg')}" if param else str(first.get("msg"))
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}


def _param_of(error: dict[str, Any]) -> str | None:
    """The field a model-level validation error names (a request-wide check such as valid Unicode), if any."""
    cause = (error.get("ctx") or {}).get("error")
    return cause.param if isinstance(cause, InvalidTextError) else None


def _native_validation_error(error: dict[str, Any]) -> dict[str, Any]:
    cleaned = _clean_validation_error(error)
    param = _param_of(error)
    if param is not None and tuple(cleaned.get("loc", ())) == ("body",):
        cleaned["loc"] = ["body", param]
    return cleaned


async def _handle_validation(request: Request, exc: Exception) -> JSONResponse:
    errors = [dict(e) for e in exc.errors()] if isinstance(exc, RequestValidationError) else []
    if is_anthropic_path(request):
        return JSONResponse(_anthropic_validation_body(errors), status_code=400)
    if is_openai_path(request):
        return JSONResponse(_openai_validation_body(errors), status_code=400)
    return JSONResponse({"detail": [_native_validation_error(e) for e in errors]}, status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    """Register the single mapping from our errors (and request validation errors) to responses."""
    app.add_exception_handler(Qwen3APIError, _handle)
    app.add_exception_handler(RequestValidationError, _handle_validation)


def client_message(exc: BaseException) -> str:
    """The one-line message of an error event that ends a native stream (our words, never internals)."""
    error = client_safe(exc)
    if isinstance(error, EngineError):
        logger.error("generation failed: %s", exc, exc_info=exc if error is not exc else None)
    detail = _native_body(error)["detail"]
    if isinstance(detail, list):
        return "; ".join(str(entry.get("msg")) for entry in detail)
    return str(detail)
