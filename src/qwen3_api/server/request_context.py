"""What the server records about the request being served: its id, and what its generation did.

The outermost middleware (`server/access_log.py`) creates one `RequestRecord` per HTTP request and puts it in a
context variable; tasks started while serving the request (stream pumps, the streaming response) copy the context,
so the services fill in the same record. The access-log line and the latency histograms are made from it.
"""

from __future__ import annotations

import contextvars
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from qwen3_api.engine.outputs import RequestOutput

# A client's X-Request-Id is kept if it looks like an id (it is echoed in headers and written to logs).
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:~-]{1,128}")


def request_id_from(header: str | None) -> str:
    """The client's request id if it is sane, else a fresh one."""
    if header is not None and _SANE_REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


@dataclass
class RequestRecord:
    """One HTTP request, as the access log and the metrics see it."""

    request_id: str
    method: str
    path: str
    started: float = field(default_factory=time.monotonic)
    route: str | None = None
    status: int | None = None
    generation: bool = False  # True once the request reached the engine
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    first_token_at: float | None = None
    queue_time: float | None = None  # seconds in the engine's queue before its first step, where the engine says
    finish_reasons: list[str] = field(default_factory=list)
    releases: list[Callable[[], None]] = field(default_factory=list)  # run once the response is over

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started

    def release(self) -> None:
        """Give back what the request held (its admission slots); safe to call twice."""
        releases, self.releases = self.releases, []
        for release in releases:
            release()


_record_var: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar("qwen3_api_record", default=None)


def current_record() -> RequestRecord | None:
    """The record of the request being served, or None outside a request."""
    return _record_var.get()


def set_record(record: RequestRecord) -> contextvars.Token[RequestRecord | None]:
    return _record_var.set(record)


def reset_record(token: contextvars.Token[RequestRecord | None]) -> None:
    _record_var.reset(token)


def current_request_id() -> str | None:
    record = _record_var.get()
    return record.request_id if record is not None else None


def observe(siblings: list[AsyncIterator[RequestOutput]]) -> list[AsyncIterator[RequestOutput]]:
    """The streams of one prompt's sequences, unchanged; their tokens, first-token time and finish reasons are
    written to the current request's record (the shared prompt counted once)."""
    record = current_record()
    if record is None:
        return siblings
    record.generation = True
    prompt_counted = [False]
    return [_observed(stream, record, prompt_counted) for stream in siblings]


async def _observed(
    stream: AsyncIterator[RequestOutput], record: RequestRecord, prompt_counted: list[bool]
) -> AsyncIterator[RequestOutput]:
    completion = 0
    try:
        async for out in stream:
            if not prompt_counted[0] and out.prompt_tokens:
                record.prompt_tokens += out.prompt_tokens
                prompt_counted[0] = True
            record.completion_tokens += out.completion_tokens - completion
            completion = out.completion_tokens
            record.cached_tokens = max(record.cached_tokens, out.cached_tokens)
            if out.queue_time is not None and record.queue_time is None:
                record.queue_time = out.queue_time
            if out.new_token_ids and record.first_token_at is None:
                record.first_token_at = time.monotonic()
            if out.finished and out.finish_reason is not None:
                record.finish_reasons.append(out.finish_reason.value)
            yield out
    finally:
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()
