"""A finished request as one value: its stream collected into text, tokens, counts and finish reason."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from qwen3_api.engine.outputs import FinishReason, RequestOutput, TokenLogprob
from qwen3_api.errors import EngineError


@dataclass
class FinalOutput:
    """A finished request, collected from its stream."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    logprobs: list[TokenLogprob] | None = None
    stop_reason: str | int | None = None


async def collect_final_output(stream: AsyncIterator[RequestOutput]) -> FinalOutput:
    """Drain a stream into its final output."""
    texts: list[str] = []
    token_ids: list[int] = []
    logprobs: list[TokenLogprob] | None = None
    last: RequestOutput | None = None
    async for out in stream:
        texts.append(out.new_text)
        token_ids.extend(out.new_token_ids)
        if out.logprobs is not None:  # extended in place: O(new entries) per output, not O(all so far)
            if logprobs is None:
                logprobs = []
            logprobs.extend(out.logprobs)
        last = out
    if last is None or last.finish_reason is None:
        raise EngineError("the request ended without a finish reason")
    return FinalOutput(
        text="".join(texts),
        token_ids=token_ids,
        finish_reason=last.finish_reason,
        prompt_tokens=last.prompt_tokens,
        completion_tokens=last.completion_tokens,
        cached_tokens=last.cached_tokens,
        logprobs=logprobs,
        stop_reason=last.stop_reason,
    )
