"""Cancel a request's work when its client goes away, so the engine frees what it holds at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

logger = logging.getLogger(__name__)
T = TypeVar("T")


async def _disconnected(request: Request) -> None:
    """Return once the ASGI server reports that the client went away (the body is already read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`; if the client disconnects first, cancel it (its engine requests are aborted) and raise."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        logger.info("client disconnected from %s; aborting its generation", request.url.path)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise asyncio.CancelledError("client disconnected")
    finally:
        for pending in (task, watcher):
            if not pending.done():
                pending.cancel()
