"""POST /v1/completions: raw prompts (text or token ids, one or a batch), streamed and not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qwen3_api.engine.outputs import TokenLogprob
from qwen3_api.engine.sampling import SamplingParams
from qwen3_api.engine.structured import StructuredOutput
from qwen3_api.errors import InvalidRequestError
from qwen3_api.server.openai.params import to_sampling_params
from qwen3_api.server.openai.protocol import (
    Completion,
    CompletionChoice,
    CompletionRequest,
    Usage,
    completion_id,
    now,
)
from qwen3_api.server.openai.serving import OpenAIServing, error_event, generation_defaults, log_user
from qwen3_api.server.response_cache import GenerationJob
from qwen3_api.server.streams import DONE, merge, sse

if TYPE_CHECKING:
    from qwen3_api.engine.async_engine import FinalOutput
    from qwen3_api.server.cached_generation import Generation


@dataclass(frozen=True)
class PreparedCompletion:
    prompts: list[list[int]]
    prompt_texts: list[str]
    params_per_prompt: list[SamplingParams]
    n: int
    echo: bool = False

    @property
    def jobs(self) -> list[GenerationJob]:
        pairs = zip(self.prompts, self.params_per_prompt, strict=True)
        return [GenerationJob(prompt, params, self.n) for prompt, params in pairs]

    @property
    def shape(self) -> dict[str, Any]:
        """What changes the formatting beyond the prompts and parameters (for the response cache key)."""
        return {"echo": self.echo}


class CompletionServing(OpenAIServing):
    """Text completions over the shared engine."""

    route = "completions"

    def prepare(self, request: CompletionRequest) -> PreparedCompletion:
        self.check_model(request.model)
        self.check_n(request.n)
        tokenizer = self.engine.tokenizer
        raw = request.prompt
        if isinstance(raw, str):
            prompts = [tokenizer.encode(raw)]
        elif all(isinstance(p, str) for p in raw):
            prompts = [tokenizer.encode(p) for p in raw]  # type: ignore[arg-type]
        elif all(isinstance(p, int) for p in raw):
            prompts = [list(raw)]  # type: ignore[arg-type]
        else:
            prompts = [list(p) for p in raw]  # type: ignore[arg-type,union-attr]
        if len(prompts) * request.n > self.settings.max_queued_requests:
            raise InvalidRequestError("too many prompts × n for one request", "prompt")
        params_list = []
        for prompt_ids in prompts:
            params = to_sampling_params(
                request, max_tokens=request.max_tokens, defaults=generation_defaults(self.engine),
                logprobs=request.logprobs,
            )  # fmt: skip
            self.engine.check_request(prompt_ids, params, "max_tokens")
            params_list.append(params)
        texts = [tokenizer.decode(p, skip_special_tokens=False) if request.echo else "" for p in prompts]
        return PreparedCompletion(prompts, texts, params_list, request.n, request.echo)

    @staticmethod
    def grammars(prepared: PreparedCompletion) -> list[StructuredOutput]:
        """Text completions take no grammar."""
        return []

    @staticmethod
    def num_sequences(prepared: PreparedCompletion) -> int:
        """Engine sequences the request takes (its admission cost)."""
        return len(prepared.prompts) * prepared.n

    async def complete(
        self, request: CompletionRequest, prepared: PreparedCompletion, generation: Generation
    ) -> Completion:
        response_id = completion_id("cmpl")
        log_user(response_id, request.user)
        # Every prompt's sequences are submitted together, so they share engine steps.
        outputs: list[FinalOutput] = await generation.outputs()
        choices = []
        for index, out in enumerate(outputs):
            echo = prepared.prompt_texts[index // prepared.n]
            logprobs = None
            if request.logprobs is not None:
                logprobs = self._legacy_logprobs(out.token_ids, out.logprobs, out.stop_reason, len(echo))
            choices.append(
                CompletionChoice(
                    index=index, text=echo + out.text, logprobs=logprobs, finish_reason=out.finish_reason.value
                )
            )
        prompt_tokens = sum(len(p) for p in prepared.prompts)
        completion_tokens = sum(o.completion_tokens for o in outputs)
        usage = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details={"cached_tokens": sum(o.cached_tokens for o in outputs[:: prepared.n])},
        )
        return Completion(id=response_id, created=now(), model=request.model, choices=choices, usage=usage)

    def _legacy_logprobs(
        self, token_ids: list[int], logprobs: list[TokenLogprob] | None, stop_reason: object, offset: int
    ) -> dict[str, Any]:
        entries = self.logprob_entries(token_ids, logprobs, stop_reason)
        offsets = []
        for entry in entries:
            offsets.append(offset)
            offset += len(entry["token"])
        return {
            "tokens": [e["token"] for e in entries],
            "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
            "text_offset": offsets,
        }

    async def stream(
        self, request: CompletionRequest, prepared: PreparedCompletion, generation: Generation
    ) -> AsyncIterator[str]:
        chunk_id, created = completion_id("cmpl"), now()
        log_user(chunk_id, request.user)
        base = {"id": chunk_id, "object": "text_completion", "created": created, "model": request.model}
        completion_tokens = [0] * (len(prepared.prompts) * prepared.n)
        cached = [0] * len(completion_tokens)
        try:
            for index, echo in enumerate(prepared.prompt_texts):
                for j in range(prepared.n):
                    if echo:
                        yield sse({**base, "choices": [{"index": index * prepared.n + j, "text": echo,
                                                        "logprobs": None, "finish_reason": None}]})  # fmt: skip
            async for index, out in merge(generation.streams()):
                completion_tokens[index] = out.completion_tokens
                cached[index] = out.cached_tokens
                logprobs = None
                if request.logprobs is not None and out.logprobs:
                    stop = out.stop_reason if out.finished else None
                    logprobs = self._legacy_logprobs(out.new_token_ids, out.logprobs, stop, 0)
                if out.new_text or logprobs:
                    yield sse({**base, "choices": [{"index": index, "text": out.new_text, "logprobs": logprobs,
                                                    "finish_reason": None}]})  # fmt: skip
                if out.finished and out.finish_reason is not None:
                    yield sse({**base, "choices": [{"index": index, "text": "", "logprobs": None,
                                                    "finish_reason": out.finish_reason.value}]})  # fmt: skip
            if request.include_usage:
                prompt_tokens = sum(len(p) for p in prepared.prompts)
                usage = {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": sum(completion_tokens),
                    "total_tokens": prompt_tokens + sum(completion_tokens),
                    "prompt_tokens_details": {"cached_tokens": sum(cached[:: prepared.n])},
                }
                yield sse({**base, "choices": [], "usage": usage})
        except Exception as exc:  # the stream has begun: end it with an error event, never hang
            yield error_event(exc)
        yield DONE
