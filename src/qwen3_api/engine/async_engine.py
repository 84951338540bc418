"""The asyncio front of the engine: submit a request, receive its outputs as an async stream, abort it.

One background thread owns the engine core and steps it while any request is unfinished. Requests cross into that
thread as commands; outputs cross back through `loop.call_soon_threadsafe` into per-request asyncio queues.
Detokenization and stop strings are handled once, for every backend, by each request's state (`request_state`).

The loop thread also enforces each request's deadline (`request_timeout`), checked before every step, so a request
past it is aborted inside the engine even when nothing on the HTTP side is awake. A failure while processing one
request's output fails that request alone; an exception that escapes the loop itself ends every request with an
error at once, marks the engine dead (`is_alive` False) and calls `on_death`, so the server can exit and be restarted.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qwen3_api.engine.core import EngineCore
from qwen3_api.engine.detokenize import IncrementalDetokenizer
from qwen3_api.engine.final_output import FinalOutput, collect_final_output
from qwen3_api.engine.outputs import CoreOutput, FinishReason, RequestOutput
from qwen3_api.engine.request_state import Item, RequestState
from qwen3_api.engine.sampling import SamplingParams
from qwen3_api.engine.tokenizer import Tokenizer
from qwen3_api.errors import (
    ContextLengthExceededError,
    EngineDeadError,
    EngineError,
    EngineOverloadedError,
    InvalidRequestError,
    RequestTimeoutError,
    ServerShuttingDownError,
)

if TYPE_CHECKING:
    from qwen3_api.engine.prefix_store import PrefixPersistence
    from qwen3_api.engine.structured import StructuredOutput

logger = logging.getLogger(__name__)

@dataclass
class _Command:
    kind: str  # "add", "abort" or "abort_all"
    request_id: str
    state: RequestState | None = None
    prompt_token_ids: list[int] = field(default_factory=list)
    prefix_group: str | None = None
    error: BaseException | None = None  # what "abort_all" answers the requests it ends


class AsyncEngine:
    """Asyncio-facing engine over any `EngineCore` backend."""

    def __init__(
        self,
        core: EngineCore,
        tokenizer: Tokenizer,
        model_name: str,
        max_queued_requests: int = 256,
        request_timeout: float | None = None,
        model_identity: str | None = None,
    ):
        """`request_timeout`: seconds from submission after which a request is aborted (None: no deadline)."""
        self.core = core
        self.tokenizer = tokenizer
        self.model_name = model_name
        # What the weights, tokenizer and runtime choices hash to (models.identity); caches key on it.
        self.model_identity = model_identity or model_name
        # Saves the prefix cache to disk now and then, on the loop thread, and at shutdown (--prefix-cache-dir).
        self.prefix_persistence: PrefixPersistence[Any] | None = None
        self.max_model_len = core.max_model_len
        self.max_queued_requests = max_queued_requests
        self.request_timeout = request_timeout
        self._commands: collections.deque[_Command] = collections.deque()
        self._lock = threading.Lock()  # orders submissions against the loop's death: none is left unanswered
        self._draining = False
        self.death_reason: str | None = None  # set once the loop thread has died
        self._on_death: Callable[[str], None] | None = None
        self._wakeup = threading.Event()
        self._stopped = threading.Event()
        self._states: dict[str, RequestState] = {}  # loop thread only
        self._num_live = 0  # event-loop side count of unfinished requests
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        # Loop-thread seconds spent on steps' outputs (detokenizing, stop strings, handing them over): added to
        # every step's time, so to every token's.
        self.output_seconds = 0.0

    # ---- lifecycle -------------------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop, on_death: Callable[[str], None] | None = None) -> None:
        """Start the loop thread; outputs are delivered on `loop`. `on_death(reason)` runs on `loop` if the loop
        thread dies."""
        self._loop = loop
        self._on_death = on_death
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self._thread.start()

    @property
    def is_alive(self) -> bool:
        """True while the loop thread runs (or is not started yet); False once it died."""
        return self.death_reason is None and (self._thread is None or self._thread.is_alive())

    @property
    def draining(self) -> bool:
        return self._draining

    def drain(self) -> None:
        """Refuse new requests from now on (ServerShuttingDownError); unfinished ones go on."""
        self._draining = True

    def abort_all(self, error: BaseException) -> None:
        """End every unfinished request now with `error`, freeing what each holds."""
        self._submit(_Command("abort_all", "", error=error))

    def shutdown(self) -> None:
        """Stop the loop thread and release the backend."""
        self._stopped.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.prefix_persistence is not None:
            if self._thread is not None and self._thread.is_alive():  # a step still running owns the backend
                logger.warning("prefix cache: not saved at shutdown, the engine loop did not stop in time")
            else:
                self.prefix_persistence.save_now()
        self.core.shutdown()

    @property
    def num_unfinished_requests(self) -> int:
        return self._num_live

    # ---- requests --------------------------------------------------------------------------------------------
    def check_request(self, prompt_token_ids: list[int], params: SamplingParams, max_tokens_param: str) -> None:
        """Reject what can never run, before it is queued: empty prompts, unknown ids, context overflow."""
        if not prompt_token_ids:
            raise InvalidRequestError("the prompt is empty", "prompt")
        if min(prompt_token_ids) < 0 or max(prompt_token_ids) >= self.tokenizer.vocab_size:
            raise InvalidRequestError(f"prompt token ids must be in [0, {self.tokenizer.vocab_size})", "prompt")
        if len(prompt_token_ids) + params.max_tokens > self.max_model_len:
            raise ContextLengthExceededError(
                len(prompt_token_ids), params.max_tokens, self.max_model_len, param=max_tokens_param
            )
        for token_id, _ in params.logit_bias:
            if not 0 <= token_id < self.tokenizer.vocab_size:
                raise InvalidRequestError(f"logit_bias token id {token_id} is not in the vocabulary", "logit_bias")

    def compile_grammar(self, structured: StructuredOutput) -> None:
        """Compile a structured-output grammar ahead of its request, in the calling thread (blocking; seconds at
        worst), where the backend supports it; errors in the grammar raise InvalidRequestError."""
        compile_ahead = getattr(self.core, "compile_grammar", None)
        if compile_ahead is not None:
            compile_ahead(structured)

    async def generate(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str | None = None,
        prefix_group: str | None = None,
        max_tokens_param: str = "max_tokens",
    ) -> AsyncIterator[RequestOutput]:
        """Submit one request and stream its outputs; closing the stream early aborts the request."""
        if self._loop is None:
            raise EngineError("the engine is not started")
        self.check_accepting()
        self.check_request(prompt_token_ids, params, max_tokens_param)
        if self._num_live >= self.max_queued_requests:
            raise EngineOverloadedError(
                f"the server is at its limit of {self.max_queued_requests} unfinished requests; retry later"
            )
        request_id = request_id or uuid.uuid4().hex
        state = RequestState(
            request_id=request_id,
            params=params,
            detokenizer=IncrementalDetokenizer(
                self.tokenizer, prompt_token_ids, skip_special_tokens=params.skip_special_tokens, stop=params.stop
            ),
            queue=asyncio.Queue(),
            num_prompt_tokens=len(prompt_token_ids),
            deadline=None if self.request_timeout is None else time.monotonic() + self.request_timeout,
        )
        self._num_live += 1
        finished = False
        try:
            self._submit(_Command("add", request_id, state, list(prompt_token_ids), prefix_group))
            while True:
                item = await state.queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            self._num_live -= 1
            if not finished:
                self._submit(_Command("abort", request_id))

    def generate_siblings(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        n: int,
        max_tokens_param: str = "max_tokens",
        request_id: str | None = None,
    ) -> list[AsyncIterator[RequestOutput]]:
        """Streams of `n` sequences from one prompt; they share its KV blocks, and sibling i uses seed + i.

        `request_id` (the HTTP request's) prefixes the engine's ids, which stay unique if a client reuses it.
        """
        self.check_request(prompt_token_ids, params, max_tokens_param)
        group = f"{request_id}-{uuid.uuid4().hex[:8]}" if request_id else uuid.uuid4().hex
        return [
            self.generate(
                prompt_token_ids,
                dataclasses.replace(params, seed=None if params.seed is None else params.seed + i),
                f"{group}-{i}",
                group if n > 1 else None,
                max_tokens_param,
            )
            for i in range(n)
        ]

    async def generate_n(
        self, prompt_token_ids: list[int], params: SamplingParams, n: int, max_tokens_param: str = "max_tokens"
    ) -> list[FinalOutput]:
        """Run `n` sequences from one prompt and collect their final outputs (the first error is raised)."""
        streams = self.generate_siblings(prompt_token_ids, params, n, max_tokens_param)
        try:
            async with asyncio.TaskGroup() as tasks:
                futures = [tasks.create_task(self.collect(stream)) for stream in streams]
        except BaseExceptionGroup as group:
            raise _first_leaf(group) from None
        return [f.result() for f in futures]

    collect = staticmethod(collect_final_output)

    def check_accepting(self) -> None:
        """Raise unless new requests are accepted: the loop died (EngineDeadError), or the server drains."""
        if self.death_reason is not None:
            raise EngineDeadError(f"the engine stopped ({self.death_reason}); the server is restarting")
        if self._draining:
            raise ServerShuttingDownError()

    # ---- loop thread -----------------------------------------------------------------------------------------
    def _submit(self, command: _Command) -> None:
        with self._lock:
            if self.death_reason is not None:
                if command.state is not None:
                    self._deliver(command.state, EngineError(f"the engine loop stopped: {self.death_reason}"))
                return
            self._commands.append(command)
        self._wakeup.set()

    def _deliver(self, state: RequestState, item: Item) -> None:
        if self._loop is not None:  # always set by start() before any request is accepted
            self._loop.call_soon_threadsafe(state.queue.put_nowait, item)

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # noqa: BLE001 - whatever ends the loop must answer every request
            self._die(exc)

    def _serve(self) -> None:
        while not self._stopped.is_set():
            self._drain_commands()
            self._expire_deadlines()
            if self.prefix_persistence is not None:
                self.prefix_persistence.maybe_save()
            if not self.core.has_unfinished_requests():
                self._wakeup.wait(timeout=self._idle_wait())
                self._wakeup.clear()
                continue
            try:
                outputs = self.core.step()
            except Exception as exc:  # a failing step must fail its requests, never hang them
                logger.exception("engine step failed")
                self._fail_all(exc)
                continue
            started = time.perf_counter()
            for output in outputs:
                try:
                    self._process(output)
                except Exception as exc:  # e.g. the detokenizer: this request's failure, not the batch's
                    logger.exception("request %s: processing its output failed", output.request_id)
                    self._fail_request(output.request_id, exc)
            self.output_seconds += time.perf_counter() - started

    def _idle_wait(self) -> float:
        """Seconds to sleep with nothing to step: until the next deadline, at most 1 s."""
        deadlines = [s.deadline for s in self._states.values() if s.deadline is not None]
        return max(0.0, min([1.0, *(d - time.monotonic() for d in deadlines)]))

    def _expire_deadlines(self) -> None:
        if self.request_timeout is None or not self._states:
            return
        now = time.monotonic()
        for state in [s for s in self._states.values() if s.deadline is not None and s.deadline <= now]:
            logger.warning("request %s timed out after %g s; aborting it", state.request_id, self.request_timeout)
            self.core.abort_request(state.request_id)
            self._states.pop(state.request_id, None)
            self._deliver(state, RequestTimeoutError(self.request_timeout))

    def _fail_request(self, request_id: str, exc: Exception) -> None:
        state = self._states.pop(request_id, None)
        try:
            self.core.abort_request(request_id)
        except Exception:
            logger.exception("request %s: abort after its failure failed", request_id)
        if state is not None:
            self._deliver(state, EngineError(str(exc) or type(exc).__name__))

    def _die(self, exc: BaseException) -> None:
        """The loop is ending on an exception: answer every request (running or still queued) and report it."""
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        logger.critical("the engine loop died: %s", reason, exc_info=exc)
        with self._lock:
            self.death_reason = reason
            pending = [c.state for c in self._commands if c.state is not None]
            self._commands.clear()
        error = f"the engine loop stopped: {reason}"
        for state in [*self._states.values(), *pending]:
            self._deliver(state, EngineError(error))
        self._states.clear()
        if self._loop is not None and self._on_death is not None:
            self._loop.call_soon_threadsafe(self._on_death, reason)

    def _drain_commands(self) -> None:
        while self._commands:
            command = self._commands.popleft()
            if command.kind == "add" and command.state is not None:
                self._states[command.request_id] = command.state
                try:
                    self.core.add_request(
                        command.request_id, command.prompt_token_ids, command.state.params, command.prefix_group
                    )
                except Exception as exc:
                    self._states.pop(command.request_id, None)
                    self._deliver(command.state, exc)
            elif command.kind == "abort" and command.request_id in self._states:
                self.core.abort_request(command.request_id)
                state = self._states.pop(command.request_id)
                self._deliver(state, state.final(FinishReason.ABORT, text=""))
            elif command.kind == "abort_all" and command.error is not None:
                for request_id, state in list(self._states.items()):
                    self.core.abort_request(request_id)
                    self._states.pop(request_id, None)
                    self._deliver(state, command.error)

    def _process(self, output: CoreOutput) -> None:
        state = self._states.get(output.request_id)
        if state is None:  # aborted after this step was scheduled
            return
        if output.error is not None:
            self._states.pop(state.request_id, None)
            self._deliver(state, EngineError(output.error))
            return
        update, stopped = state.advance(output)
        if stopped:
            self.core.abort_request(state.request_id)
        if update.finished:
            self._states.pop(state.request_id, None)
        self._deliver(state, update)

    def _fail_all(self, exc: Exception) -> None:
        for request_id, state in list(self._states.items()):
            try:
                self.core.abort_request(request_id)
            except Exception:  # the core is already broken; the requests still get their error
                logger.exception("abort after a failed step failed")
            self._states.pop(request_id, None)
            self._deliver(state, EngineError(str(exc) or type(exc).__name__))


def _first_leaf(group: BaseExceptionGroup) -> BaseException:  # type: ignore[type-arg]
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
