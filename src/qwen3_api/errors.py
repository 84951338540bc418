"""One error hierarchy for the whole project; the HTTP layer maps it to status codes in one place."""

from __future__ import annotations


class Qwen3APIError(Exception):
    """Base of every error this project raises on purpose."""


class InvalidRequestError(Qwen3APIError, ValueError):
    """The request itself is wrong; `param` names the offending field when there is one."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ContextLengthExceededError(InvalidRequestError):
    """Prompt tokens plus requested tokens do not fit the model's context."""

    def __init__(self, prompt_tokens: int, max_tokens: int, max_model_len: int, param: str | None = None) -> None:
        super().__init__(
            f"This model's maximum context length is {max_model_len} tokens, but the request has "
            f"{prompt_tokens} prompt tokens and asks for {max_tokens} new tokens "
            f"({prompt_tokens + max_tokens} in total). Shorten the prompt or lower the requested tokens.",
            param=param,
        )
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.max_model_len = max_model_len


class ModelNotFoundError(InvalidRequestError):
    """The request names a model this server does not serve."""


class NotFoundError(InvalidRequestError):
    """The request names an object (a stored response) that does not exist (404)."""


class ModelNotReadyError(Qwen3APIError):
    """The model or tokenizer is not loaded (still loading, or loading failed)."""


class ModelLoadError(Qwen3APIError):
    """A model could not be found or loaded; the message says what to do instead."""


class EngineError(Qwen3APIError):
    """Generation failed inside the engine."""


class EngineOverloadedError(Qwen3APIError):
    """The engine's queue is full; the client should retry later."""


# ---- HTTP hardening (issue 9): refused before a request reaches the engine ----------------------------------
class AuthenticationError(Qwen3APIError):
    """The request carries no API key, or one the server does not know (401)."""


class RequestTooLargeError(Qwen3APIError):
    """The request body is larger than the server's --max-request-bytes (413)."""


# ---- deadlines, faults and shutdown -------------------------------------------------------------------------------
class RequestTimeoutError(Qwen3APIError):
    """The request ran past `--request-timeout`; the engine aborted it and freed what it held."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"Request timed out after {timeout:g} s")
        self.timeout = timeout


class ServerShuttingDownError(Qwen3APIError):
    """The server is draining after SIGTERM/SIGINT: new requests are refused, unfinished ones end with this."""

    def __init__(self, message: str = "Server is shutting down") -> None:
        super().__init__(message)


class EngineDeadError(Qwen3APIError):
    """The engine loop has stopped; the process exits so that its supervisor restarts it."""


class ReplicaFailedError(Qwen3APIError):
    """The replica serving a request died before answering it (scale-out mode); the request may be sent again."""

    def __init__(self, message: str = "The replica serving this request failed; send it again") -> None:
        super().__init__(message)
