"""A request's generation through the response cache: computed by the engine (and recorded), or replayed.

Each generation route makes one call, `open_generation`, after templating and validation, and then reads the
engine's output from the returned `Generation` (`streams()` or `outputs()`) exactly as it would from the engine.
`ResponseCacheMiddleware` adds the `X-Cache` header and, once the response is over however it ended, releases a
computation that never finished, so that requests waiting for it are never stranded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qwen3_api.engine.final_output import FinalOutput
from qwen3_api.engine.outputs import FinishReason, RequestOutput, TokenLogprob
from qwen3_api.errors import EngineError, Qwen3APIError
from qwen3_api.server.disconnect import until_disconnected
from qwen3_api.server.request_context import current_record, current_request_id, observe
from qwen3_api.server.response_cache import (
    CacheStatus,
    GenerationJob,
    ResponseCache,
    is_deterministic,
    parse_cache_control,
    response_cache_key,
)

if TYPE_CHECKING:
    from qwen3_api.engine.async_engine import AsyncEngine

logger = logging.getLogger(__name__)

CACHEABLE_FINISHES = (FinishReason.STOP, FinishReason.LENGTH)  # an abort (client, deadline, shutdown) never is
_STATE_KEY = "response_cache_generation"


@dataclass(frozen=True)
class _Step:
    """One engine output of one sequence, as stored."""

    new_text: str
    new_token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason | None
    stop_reason: str | int | None


Record = list[list[_Step]]  # per sequence, in the order the route's streams are listed


def _step(out: RequestOutput) -> _Step:
    logprobs = tuple(out.logprobs) if out.logprobs is not None else None
    finish = out.finish_reason if out.finished else None
    return _Step(out.new_text, tuple(out.new_token_ids), logprobs, out.prompt_tokens, out.completion_tokens,
                 finish, out.stop_reason)  # fmt: skip


async def _replay(index: int, steps: list[_Step]) -> AsyncIterator[RequestOutput]:
    """A stored sequence as engine outputs; all of its prompt counts as cached."""
    for step in steps:
        yield RequestOutput(
            request_id=f"cached-{index}",
            new_text=step.new_text,
            new_token_ids=list(step.new_token_ids),
            finished=step.finish_reason is not None,
            finish_reason=step.finish_reason,
            prompt_tokens=step.prompt_tokens,
            completion_tokens=step.completion_tokens,
            cached_tokens=step.prompt_tokens,
            logprobs=list(step.logprobs) if step.logprobs is not None else None,
            stop_reason=step.stop_reason,
        )


def _final_output(steps: list[_Step]) -> FinalOutput:
    """A stored sequence as its final output, as `collect_final_output` over `_replay` would give it."""
    last = steps[-1]
    if last.finish_reason is None:
        raise EngineError("the stored request has no finish reason")
    logprobs = None
    if any(step.logprobs is not None for step in steps):
        logprobs = [lp for step in steps if step.logprobs is not None for lp in step.logprobs]
    return FinalOutput(
        text="".join(step.new_text for step in steps),
        token_ids=[t for step in steps for t in step.new_token_ids],
        finish_reason=last.finish_reason,
        prompt_tokens=last.prompt_tokens,
        completion_tokens=last.completion_tokens,
        cached_tokens=last.prompt_tokens,
        logprobs=logprobs,
        stop_reason=last.stop_reason,
    )


def _observe_hit(outputs: list[FinalOutput]) -> None:
    """What `observe` writes to the request's record for a replayed record (its shared prompt counted once)."""
    record = current_record()
    if record is None or not outputs:
        return
    record.generation = True
    record.prompt_tokens += outputs[0].prompt_tokens
    record.completion_tokens += sum(o.completion_tokens for o in outputs)
    record.cached_tokens = max(record.cached_tokens, outputs[0].cached_tokens)
    if any(o.token_ids for o in outputs) and record.first_token_at is None:
        record.first_token_at = time.monotonic()
    record.finish_reasons.extend(o.finish_reason.value for o in outputs)


class Generation:
    """The engine output of one request: replayed (hit) or computed (miss, bypass), recorded when it may be
    stored. Read it once, through `streams()` or `outputs()`."""

    def __init__(
        self,
        engine: AsyncEngine,
        jobs: Sequence[GenerationJob],
        status: CacheStatus,
        max_tokens_param: str = "max_tokens",
        *,
        cache: ResponseCache | None = None,
        key: str = "",
        flight: asyncio.Future[Any] | None = None,
        record: Record | None = None,
        store: bool = False,
    ) -> None:
        self.engine = engine
        self.jobs = list(jobs)
        self.status = status
        self.max_tokens_param = max_tokens_param
        self._cache, self._key, self._flight, self._record, self._store = cache, key, flight, record, store
        self._recording: Record = []
        self._finished: list[bool] = []
        self._settled = cache is None or (flight is None and not store)

    def streams(self) -> list[AsyncIterator[RequestOutput]]:
        """One stream of engine outputs per sequence, jobs in order, `n` siblings each."""
        if self._record is not None:
            return observe([_replay(i, steps) for i, steps in enumerate(self._record)])
        try:
            streams = [
                s for job in self.jobs
                for s in observe(self.engine.generate_siblings(list(job.prompt_token_ids), job.params, job.n,
                                                               self.max_tokens_param, request_id=current_request_id()))
            ]  # fmt: skip
        except BaseException:
            self.close()
            raise
        if self._settled:
            return streams
        self._recording = [[] for _ in streams]
        self._finished = [False] * len(streams)
        return [self._recorded(i, s) for i, s in enumerate(streams)]

    async def outputs(self) -> list[FinalOutput]:
        """Every sequence's final output (the first error is raised; the others are then aborted)."""
        from qwen3_api.engine.async_engine import AsyncEngine

        if self._record is not None:  # a hit: no streams to drain (a stored record is never empty)
            outputs = [_final_output(steps) for steps in self._record]
            _observe_hit(outputs)
            return outputs
        streams = self.streams()
        try:
            async with asyncio.TaskGroup() as tasks:
                futures = [tasks.create_task(AsyncEngine.collect(stream)) for stream in streams]
        except BaseExceptionGroup as group:
            error = _first_leaf(group)
            if isinstance(error, Qwen3APIError | asyncio.CancelledError):
                raise error from None
            raise EngineError(str(error) or type(error).__name__) from error
        return [f.result() for f in futures]

    async def _recorded(self, index: int, stream: AsyncIterator[RequestOutput]) -> AsyncIterator[RequestOutput]:
        try:
            async for out in stream:
                self._recording[index].append(_step(out))
                if out.finished:
                    self._sequence_finished(index, out.finish_reason)
                yield out
        finally:
            if not self._finished[index]:
                self.close()  # ended early: an error, an abort, or the reader went away

    def _sequence_finished(self, index: int, reason: FinishReason | None) -> None:
        if reason not in CACHEABLE_FINISHES:
            self.close()
            return
        self._finished[index] = True
        if all(self._finished) and not self._settled:
            self._settled = True
            if self._cache is not None:
                self._cache.finish(self._key, self._flight, self._recording, store=self._store)

    def close(self) -> None:
        """Give up a computation that did not finish: waiters wake up and one of them computes. Idempotent."""
        if self._settled:
            return
        self._settled = True
        if self._cache is not None:
            self._cache.finish(self._key, self._flight, None)


def _first_leaf(group: BaseExceptionGroup) -> BaseException:  # type: ignore[type-arg]
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


async def open_generation(
    request: Request,
    engine: AsyncEngine,
    route: str,
    jobs: Sequence[GenerationJob],
    max_tokens_param: str = "max_tokens",
    shape: dict[str, Any] | None = None,
) -> Generation:
    """The generation for `jobs` as route `route` asks for them (`shape`: options that change how the route
    formats the output, beyond the jobs). Waits for an identical in-flight request, if there is one."""
    cache: ResponseCache | None = getattr(request.app.state, "response_cache", None)
    directives = parse_cache_control(request.headers.get("cache-control"))
    usable = cache is not None and cache.enabled and is_deterministic(jobs)
    if cache is None or not usable or directives & {"no-cache", "no-store"}:
        if cache is not None:
            cache.count_bypass()
        # no-cache: answer fresh, but keep the result for the next request; no-store keeps it out too
        store = usable and "no-store" not in directives
        key = response_cache_key(engine.model_identity, route, jobs, shape) if store else ""
        generation = Generation(engine, jobs, "bypass", max_tokens_param, cache=cache, key=key, store=store)
    else:
        key = response_cache_key(engine.model_identity, route, jobs, shape)
        lookup = cache.acquire(key)
        if lookup.status == "wait":
            lookup = await until_disconnected(request, cache.lookup(key))
        if lookup.status == "hit":
            generation = Generation(engine, jobs, "hit", max_tokens_param, record=lookup.record)
        else:
            generation = Generation(
                engine, jobs, "miss", max_tokens_param, cache=cache, key=key, flight=lookup.flight, store=True
            )
    setattr(request.state, _STATE_KEY, generation)
    return generation


class ResponseCacheMiddleware:
    """Adds `X-Cache: hit|miss|bypass` to generation responses and closes their generation when the response
    ends (finished, failed, or the client went away)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})

        async def send_with_status(message: Message) -> None:
            generation = state.get(_STATE_KEY)
            if message["type"] == "http.response.start" and generation is not None:
                message["headers"] = [*message.get("headers", []), (b"x-cache", generation.status.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            generation = state.get(_STATE_KEY)
            if generation is not None:
                generation.close()
