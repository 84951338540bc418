"""Forwarding one request through an in-process ASGI app: complete responses end at once, streams stream, and a
caller that stops reading is a disconnect for the app (no Ray needed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse

from qwen3_api.scaleout.asgi_bridge import ForwardedRequest, ResponseStart, serve_asgi


def make_app(events: list[str]) -> FastAPI:
    app = FastAPI()

    @app.middleware("http")  # a BaseHTTPMiddleware, as the server has: it listens for disconnects
    async def passthrough(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        return await call_next(request)

    @app.post("/echo")
    async def echo(request: Request) -> Response:
        return Response(await request.body(), headers={"x-seen": request.headers.get("x-probe", "")})

    @app.get("/stream")
    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            try:
                for i in range(1000):
                    yield f"data: {i}\n\n".encode()
                    await asyncio.sleep(0.01)
            finally:
                events.append("stream closed")

        return StreamingResponse(chunks(), media_type="text/event-stream")

    return app


def test_a_complete_response_ends_without_waiting_for_a_disconnect() -> None:
    async def run() -> list[ResponseStart | bytes]:
        request = ForwardedRequest("POST", "/echo", headers=((b"x-probe", b"1"),), body=b"hello")
        gen = serve_asgi(make_app([]), request, ((b"x-replica", b"r1"),))
        return await asyncio.wait_for(_collect(gen), timeout=5)

    start, *body = asyncio.run(run())
    assert isinstance(start, ResponseStart) and start.status == 200
    assert start.header("x-seen") == "1" and start.header("x-replica") == "r1"
    assert b"".join(body) == b"hello"  # type: ignore[arg-type]


def test_a_caller_that_stops_reading_disconnects_the_stream() -> None:
    events: list[str] = []

    async def run() -> None:
        gen = serve_asgi(make_app(events), ForwardedRequest("GET", "/stream"))
        start = await gen.__anext__()
        assert isinstance(start, ResponseStart) and start.header("content-type").startswith("text/event-stream")
        assert await gen.__anext__() == b"data: 0\n\n"
        await asyncio.wait_for(gen.aclose(), timeout=10)

    asyncio.run(run())
    assert events == ["stream closed"]


async def _collect(gen: AsyncIterator[ResponseStart | bytes]) -> list[ResponseStart | bytes]:
    return [item async for item in gen]
