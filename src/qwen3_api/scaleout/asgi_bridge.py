"""Serve one forwarded HTTP request on an in-process ASGI app, as a stream: the response start, then body chunks.

A replica answers requests through the very app of the single-process server, so every route, error shape,
cache and stream behaves the same. When the caller stops reading (its client went away), the app sees
`http.disconnect`, as it would from uvicorn, and aborts the request in the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message


@dataclass(frozen=True)
class ForwardedRequest:
    """An HTTP request as the ingress received it (body read in full, at most the body limit plus one byte)."""

    method: str
    path: str
    query_string: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""
    client: tuple[str, int] | None = None


@dataclass(frozen=True)
class ResponseStart:
    """Status and headers of a response; body chunks (bytes) follow it in the stream."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...] = field(default_factory=tuple)

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode()
        return next((value.decode("latin-1") for key, value in self.headers if key.lower() == wanted), None)


async def serve_asgi(
    app: ASGIApp, request: ForwardedRequest, extra_headers: tuple[tuple[bytes, bytes], ...] = ()
) -> AsyncIterator[ResponseStart | bytes]:
    """Run `request` through `app`, yielding its ResponseStart then its body chunks as the app sends them."""
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request.method,
        "scheme": "http", "path": request.path, "raw_path": request.path.encode(), "root_path": "",
        "query_string": request.query_string, "headers": list(request.headers), "client": request.client,
        "server": ("replica", 0),
    }  # fmt: skip
    outbox: asyncio.Queue[Message | None] = asyncio.Queue()
    disconnected = asyncio.Event()
    body_sent = False

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            disconnected.set()  # as an ASGI server does: once the response is complete, receive() says disconnect
        await outbox.put(message)

    async def run() -> None:
        try:
            await app(scope, receive, send)
        finally:
            await outbox.put(None)

    task = asyncio.create_task(run())
    try:
        while True:
            message = await outbox.get()
            if message is None:
                break
            if message["type"] == "http.response.start":
                headers = tuple((bytes(k), bytes(v)) for k, v in message.get("headers", ())) + extra_headers
                yield ResponseStart(int(message["status"]), headers)
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield bytes(message["body"])
                if not message.get("more_body", False):
                    break
        await task  # the app's own exceptions (after the response ended) surface here
    finally:
        disconnected.set()
        if not task.done():
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), timeout=5)
            task.cancel()
