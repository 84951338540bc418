"""The outermost middleware: request id, one access-log line and the latency metrics per request, and a JSON 500
for any exception nothing else handled.

Catching here, inside the ASGI server, keeps the connection usable: an exception that reached uvicorn would make it
answer in plain text and drop the keep-alive connection, breaking the client's next request on it.
"""

from __future__ import annotations

import logging
import time

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qwen3_api.logging_setup import request_id_var
from qwen3_api.server.errors import internal_error_response
from qwen3_api.server.metrics import ServerMetrics
from qwen3_api.server.request_context import RequestRecord, request_id_from, reset_record, set_record

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("qwen3_api.access")

REQUEST_ID_HEADER = "X-Request-Id"


class RequestContextMiddleware:
    """Gives each HTTP request an id (echoed as X-Request-Id), a record, an access-log line and its metrics (the
    request count by route template and status among them). Plain ASGI: `@app.middleware("http")` would run every
    request through an extra task group and memory streams."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None)
        record = RequestRecord(request_id_from(header), scope["method"], scope["path"])
        record_token = set_record(record)
        id_token = request_id_var.set(record.request_id)
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                record.status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = record.request_id
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # The answer is complete: its slots are free before the client can read it and send the next one
                # (released after the send, a client at the limit could be refused its very next request).
                record.release()
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("unhandled error serving %s %s", scope["method"], scope["path"])
            if not response_started:
                await internal_error_response(scope["path"])(scope, receive, send_with_id)
            else:
                record.status = record.status or 500
        finally:
            record.release()
            route = scope.get("route")
            record.route = getattr(route, "path", None)
            self._log(record)
            request_id_var.reset(id_token)
            reset_record(record_token)

    def _log(self, record: RequestRecord) -> None:
        e2e = time.monotonic() - record.started
        status = record.status if record.status is not None else 499  # the client left before any answer
        self.metrics.requests.labels(route=record.route or "other", status=str(status)).inc()
        self.metrics.observe_request(record, e2e)
        fields: dict[str, object] = {
            "method": record.method,
            "route": record.route or record.path,
            "status": status,
            "e2e_s": round(e2e, 6),
        }
        if record.generation:
            ttft = record.ttft
            fields.update(
                prompt_tokens=record.prompt_tokens,
                completion_tokens=record.completion_tokens,
                cached_tokens=record.cached_tokens,
                ttft_s=None if ttft is None else round(ttft, 6),
                queue_s=None if record.queue_time is None else round(record.queue_time, 6),
                finish_reason=",".join(record.finish_reasons) or None,
            )
        text = " ".join(f"{k}={v}" for k, v in fields.items() if k not in ("method", "route", "status"))
        access_logger.info("%s %s %d %s", record.method, record.path, status, text, extra=fields)
