"""Request preparation (templating, tokenizing) on the event loop or in a worker thread, by request size.

A long prompt takes a while to template and tokenize, and on the event loop it would stall every other stream, so
it goes to a worker thread. A short one takes well under a millisecond, less than the thread handoff itself
(measured on a busy 2-core machine: the handoff was most of a response-cache hit's latency), so it runs inline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from fastapi import Request

T = TypeVar("T")

# Request bodies up to this many bytes are prepared on the event loop (their prompt is at most this long).
INLINE_MAX_BODY_BYTES = 4096


def _body_bytes(request: Request) -> int | None:
    try:
        return int(request.headers.get("content-length", ""))
    except ValueError:  # absent (chunked) or malformed: treated as long
        return None


async def prepare(request: Request, work: Callable[[], T]) -> T:
    """`work()` inline when the request body is short, else in a worker thread. Only for work whose size follows
    the body's (a prompt read from elsewhere, e.g. a stored conversation, may be long behind a short body)."""
    size = _body_bytes(request)
    if size is not None and size <= INLINE_MAX_BODY_BYTES:
        return work()
    return await asyncio.to_thread(work)
