"""Refuse request bodies over `--max-request-bytes` with 413, before they are parsed (ASGI middleware).

A declared Content-Length over the limit is refused at once, without reading the body; a body without one
(chunked) is counted as it arrives and refused as soon as it passes the limit.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qwen3_api.errors import InvalidRequestError, RequestTooLargeError
from qwen3_api.server.errors import error_response


class BodyLimitMiddleware:
    """413 for bodies larger than `max_bytes`; 400 for a Content-Length that is not a number."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> RequestTooLargeError:
        return RequestTooLargeError(f"the request body is larger than this server's limit of {self.max_bytes} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    bad = InvalidRequestError("the Content-Length header is not a number", "Content-Length")
                    await error_response(bad, path)(scope, receive, send)
                    return
                if int(value) > self.max_bytes:
                    await error_response(self._too_large(), path)(scope, receive, send)
                    return
        received = 0
        exceeded = False
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise self._too_large()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if exceeded:  # whatever the app makes of the aborted read, the client gets the 413
                return
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except RequestTooLargeError:
            exceeded = True
        if exceeded and not response_started:
            await error_response(self._too_large(), path)(scope, receive, send)
