"""What the OpenAI endpoints share: model check, limits, engine streams, logprobs and usage formatting."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from qwen3_api.config import Settings
from qwen3_api.engine.outputs import RequestOutput, TokenLogprob
from qwen3_api.engine.sampling import SamplingParams
from qwen3_api.errors import EngineError, InvalidRequestError, ModelNotFoundError
from qwen3_api.server.errors import client_safe, openai_error_body
from qwen3_api.server.openai.params import SamplingDefaults
from qwen3_api.server.openai.protocol import Usage
from qwen3_api.server.request_context import current_request_id, observe
from qwen3_api.server.streams import collect_all, sse

if TYPE_CHECKING:
    from qwen3_api.engine.async_engine import AsyncEngine, FinalOutput

logger = logging.getLogger(__name__)


def log_user(response_id: str, user: str | None) -> None:
    """Log the request's `user` with the id its response carries, so an operator can trace abuse to a user."""
    if user is not None:
        logger.info("request %s: user %r", response_id, user)


def served_model_names(engine: AsyncEngine) -> set[str]:
    """The names a request may use for the served model: its id, and the last part of a path or repo id."""
    return {engine.model_name, PurePath(engine.model_name).name}


def generation_defaults(engine: AsyncEngine) -> SamplingDefaults:
    """The model's generation config where it says something, OpenAI's defaults otherwise."""
    config = engine.tokenizer.generation
    return SamplingDefaults(
        temperature=config.temperature if config.temperature is not None else 1.0,
        top_p=config.top_p if config.top_p is not None else 1.0,
        top_k=config.top_k if config.top_k is not None else 0,
    )


def usage_of(prompt_tokens: int, outputs: list[FinalOutput]) -> Usage:
    completion = sum(o.completion_tokens for o in outputs)
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion,
        total_tokens=prompt_tokens + completion,
        prompt_tokens_details={"cached_tokens": outputs[0].cached_tokens if outputs else 0},
    )


def error_event(exc: Exception) -> str:
    """The SSE event that ends a stream which failed after it began (our words; the exception goes to the log)."""
    error = client_safe(exc)
    if isinstance(error, EngineError):
        logger.error("generation failed: %s", exc, exc_info=exc if error is not exc else None)
    return sse(openai_error_body(error))


class OpenAIServing:
    """Base of the chat and completion services."""

    route = ""  # names the endpoint family in response cache keys

    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings

    def check_model(self, model: str) -> None:
        if model not in served_model_names(self.engine):
            raise ModelNotFoundError(
                f"the model {model!r} does not exist; this server serves {self.engine.model_name!r}", "model"
            )

    def check_n(self, n: int) -> None:
        cap = self.settings.max_num_return_sequences
        if n > cap:
            raise InvalidRequestError(f"n must be at most {cap} (the server's --max-num-return-sequences)", "n")

    def remaining_tokens(self, prompt_token_ids: list[int]) -> int:
        """Default max_tokens: whatever the context leaves (at least 1, so an overflowing prompt is reported)."""
        return max(1, self.engine.max_model_len - len(prompt_token_ids))

    def streams(
        self, prompt_token_ids: list[int], params: SamplingParams, n: int
    ) -> list[AsyncIterator[RequestOutput]]:
        """The engine streams of one prompt's `n` sequences, ids prefixed by the request's, seen by its record."""
        return observe(self.engine.generate_siblings(prompt_token_ids, params, n, request_id=current_request_id()))

    async def generate_all(self, prompt_token_ids: list[int], params: SamplingParams, n: int) -> list[FinalOutput]:
        return await collect_all(self.streams(prompt_token_ids, params, n))

    def logprob_entries(
        self, token_ids: list[int], logprobs: list[TokenLogprob] | None, stop_reason: object = None
    ) -> list[dict[str, Any]]:
        """OpenAI chat logprobs for each token (the end token that stopped the sequence is not shown)."""
        tokenizer = self.engine.tokenizer
        pairs = list(zip(token_ids, logprobs or [], strict=False))
        if pairs and isinstance(stop_reason, int) and pairs[-1][0] == stop_reason:
            pairs = pairs[:-1]

        def entry(token_id: int, logprob: float) -> dict[str, Any]:
            return {
                "token": tokenizer.token_text(token_id),
                "logprob": logprob,
                "bytes": list(tokenizer.token_bytes(token_id)),
            }

        return [
            {**entry(token_id, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top]} for token_id, lp in pairs
        ]
