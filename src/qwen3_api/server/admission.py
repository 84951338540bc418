"""Admission control: a generation request is refused with 503 + Retry-After when it is admitted, not later.

Every generation route admits its sequences (prompts × n) before it answers, so a streamed request is refused
before any byte of the stream is sent. The slots are held until the HTTP response is over (the request's record
releases them), so the count never lags behind the engine's own and the engine's check is only a backstop.
"""

from __future__ import annotations

from fastapi import Request

from qwen3_api.errors import EngineOverloadedError
from qwen3_api.server.request_context import current_record


class Admission:
    """Counts the sequences of admitted, unfinished generation requests against `max_queued_requests`."""

    def __init__(self, max_queued_requests: int) -> None:
        self.max_queued_requests = max_queued_requests
        self.admitted = 0

    def admit(self, num_sequences: int) -> None:
        """Take `num_sequences` slots for the current request, or raise EngineOverloadedError (503)."""
        if self.admitted + num_sequences > self.max_queued_requests:
            raise EngineOverloadedError(
                f"the server is at its limit of {self.max_queued_requests} unfinished requests; retry later"
            )
        self.admitted += num_sequences
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.admitted -= num_sequences

        record = current_record()
        if record is not None:
            record.releases.append(release)
        else:  # outside the middleware (unit use): nothing would release it
            release()


async def admission(request: Request) -> Admission:
    """Dependency: the app's admission control."""
    result: Admission = request.app.state.admission
    return result
