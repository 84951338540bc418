"""Server-sent events and merging of several engine streams (n > 1)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

from qwen3_api.engine.async_engine import AsyncEngine, FinalOutput
from qwen3_api.engine.outputs import RequestOutput

T = TypeVar("T")

DONE = "data: [DONE]\n\n"


def sse(payload: Any) -> str:
    """One SSE event carrying `payload` as JSON (pydantic models are dumped without unset Nones)."""
    if hasattr(payload, "model_dump"):
        payload = payload.model_dump(exclude_none=True)
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def merge(streams: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Interleave items of several streams as they come, tagged with the stream's index.

    An error in one stream is raised here; leaving early cancels the pumps, which closes (and so aborts) every
    stream that is still open.
    """
    queue: asyncio.Queue[tuple[int, T] | tuple[int, BaseException] | None] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                await queue.put((index, item))
        except Exception as exc:
            await queue.put((index, exc))
        finally:
            await queue.put(None)

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            entry = await queue.get()
            if entry is None:
                remaining -= 1
                continue
            index, item = entry
            if isinstance(item, BaseException):
                raise item
            yield index, item  # type: ignore[misc]
    finally:
        await _cancel_and_wait(tasks)


async def collect_all(streams: list[AsyncIterator[RequestOutput]]) -> list[FinalOutput]:
    """Drain every stream into its final output, concurrently; the first error is raised (the rest are closed)."""
    tasks = [asyncio.ensure_future(AsyncEngine.collect(stream)) for stream in streams]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        await _cancel_and_wait(tasks)


async def _cancel_and_wait(tasks: Sequence[asyncio.Future[Any]]) -> None:
    """Cancel `tasks` and wait until each has ended (closing, and so aborting, the engine streams they read)."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
