"""What the async engine keeps per request, and how a step's token news becomes what the caller receives.

The core reports new token ids; the caller sees text. In between, once for every backend: the request's
detokenizer turns tokens into text and watches for stop strings (the tokens after the one that completed a stop
string are cut, with their logprobs), usage counts are kept, and a finished request gets its reason and the text
the detokenizer still held back.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from qwen3_api.engine.detokenize import IncrementalDetokenizer
from qwen3_api.engine.outputs import CoreOutput, FinishReason, RequestOutput
from qwen3_api.engine.sampling import SamplingParams

Item = RequestOutput | BaseException  # what a request's queue carries: an output, or the error that ends it


@dataclass
class RequestState:
    """Per-request bookkeeping, owned by the engine's loop thread after submission."""

    request_id: str
    params: SamplingParams
    detokenizer: IncrementalDetokenizer
    queue: asyncio.Queue[Item]
    num_prompt_tokens: int
    completion_tokens: int = 0
    cached_tokens: int = 0
    deadline: float | None = None  # time.monotonic() past which the loop thread aborts it

    def output(self, text: str, core: CoreOutput | None = None) -> RequestOutput:
        """An update carrying `text` and the step's tokens (none without `core`), with the usage so far."""
        return RequestOutput(
            request_id=self.request_id,
            new_text=text,
            new_token_ids=list(core.new_token_ids) if core else [],
            prompt_tokens=self.num_prompt_tokens,
            completion_tokens=self.completion_tokens,
            cached_tokens=self.cached_tokens,
            logprobs=core.new_logprobs if core else None,
            queue_time=core.queue_time if core else None,
        )

    def final(
        self, reason: FinishReason, text: str, core: CoreOutput | None = None, stop_reason: str | int | None = None
    ) -> RequestOutput:
        """The last update of the request."""
        output = self.output(text, core)
        output.finished = True
        output.finish_reason = reason
        output.stop_reason = stop_reason
        return output

    def advance(self, core: CoreOutput) -> tuple[RequestOutput, bool]:
        """The caller's update for one step's `core` output (without an error), and whether a stop string ended
        the request here (the core still runs it then and must be told to abort it)."""
        self.cached_tokens = max(self.cached_tokens, core.num_cached_tokens)
        delta = self.detokenizer.add(core.new_token_ids)
        if delta.stop_string is not None:  # the tokens after the one that completed it are not output
            del core.new_token_ids[delta.num_tokens :]
            if core.new_logprobs is not None:
                del core.new_logprobs[delta.num_tokens :]
        self.completion_tokens += len(core.new_token_ids)
        if delta.stop_string is not None:
            return self.final(FinishReason.STOP, delta.text, core, stop_reason=delta.stop_string), True
        if core.finish_reason is not None:
            text = delta.text + self.detokenizer.flush()
            return self.final(core.finish_reason, text, core, stop_reason=core.stop_token_id), False
        return self.output(delta.text, core), False
