"""The ingress: every route of the single-process server on one port, each request forwarded to a replica.

The ingress computes the request's routing key (`routing_key`), and Ray Serve's handle sends it to the replica
that `PrefixAwareRequestRouter` ranks first. The replica's response comes back unchanged (status, headers,
body, streamed as produced). A replica that dies before anything reached the client is replaced for that
request by another one, once; a stream cut later ends with the API's error event. `/health` is 200 while at
least one replica is ready, `/metrics` merges every replica's metrics under a `replica` label.

No request waits on a replica without bound: a request that no replica accepts, or whose replica sends nothing,
within `silence_limit(settings)` seconds (the request timeout, which the replica's engine enforces itself, plus
`REPLICA_GRACE_S`) is answered 503 (or its stream ends with the error event), naming the replica as the problem.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import json
import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any, cast

from ray.exceptions import RayActorError, WorkerCrashedError
from ray.serve import context as serve_context
from ray.serve.exceptions import ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from qwen3_api.config import Settings
from qwen3_api.errors import ReplicaFailedError, RequestTooLargeError
from qwen3_api.scaleout.asgi_bridge import ForwardedRequest, ResponseStart
from qwen3_api.scaleout.metrics_merge import merge_metrics
from qwen3_api.scaleout.replica import REPLICA_HEADER
from qwen3_api.scaleout.routing import RouteKey, active_router
from qwen3_api.scaleout.routing_key import block_hashes, prompt_text
from qwen3_api.scaleout.sse_errors import stream_error_event
from qwen3_api.server.errors import error_response, internal_error_response

logger = logging.getLogger(__name__)

REPLICA_DIED = (RayActorError, WorkerCrashedError, ReplicaUnavailableError)
PROBE_TIMEOUT_S = 30.0  # /health and /metrics of one replica
REPLICA_GRACE_S = 30.0  # beyond the request timeout, how long a replica may stay silent before it is given up on
NO_TIMEOUT_SILENCE_S = 3600.0  # the same bound when the request timeout is off (0)
HOP_BY_HOP = {b"connection", b"transfer-encoding", b"keep-alive"}
MAX_RESPONSE_OWNERS = 100_000  # Responses API ids remembered (their stored conversation lives on one replica)
_RESPONSE_ID = re.compile(rb'"id"\s*:\s*"(resp_[A-Za-z0-9_-]+)"')
_RESPONSE_PATH = re.compile(r"^/v1/responses/([^/]+)")


class Ingress:
    """The HTTP entry point of a scaled-out deployment (a Ray Serve deployment with no resources of its own)."""

    def __init__(self, replicas: DeploymentHandle, settings: Settings) -> None:
        # One streaming handle for every call: each handle made by `.options()` would get a request router of its
        # own, each learning prefixes and counting load on its own.
        self.replicas = replicas.options(stream=True)
        self.settings = settings
        self.response_owner: OrderedDict[str, str] = OrderedDict()
        self.retries = 0
        self.failures = 0
        self.silence_s = silence_limit(settings)

    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        if path == "/health":
            return await self._health()
        if path == "/live":
            return JSONResponse({"status": "alive"})
        if path == "/metrics":
            return await self._metrics()
        try:
            forwarded = await self._read(request)
        except RequestTooLargeError as exc:
            return error_response(exc, path)
        return await self._forward(forwarded, self._route_key(forwarded))

    # ---- forwarding ----
    async def _read(self, request: Request) -> ForwardedRequest:
        limit = self.settings.max_request_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise RequestTooLargeError(f"Request body too large (limit {limit} bytes)")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise RequestTooLargeError(f"Request body too large (limit {limit} bytes)")
        client = (request.client.host, request.client.port) if request.client else None
        headers = tuple((k.lower(), v) for k, v in request.headers.raw)
        return ForwardedRequest(request.method, request.url.path, request.url.query.encode(), headers, bytes(body),
                                client)  # fmt: skip

    def _route_key(self, request: ForwardedRequest) -> RouteKey:
        owner_match = _RESPONSE_PATH.match(request.path)
        if owner_match:  # GET / DELETE of a stored response: where it is stored
            return RouteKey(pinned_replica=self._live_owner(owner_match.group(1)))
        if request.method != "POST":
            return RouteKey()
        try:
            body = json.loads(request.body)
        except ValueError:
            return RouteKey()  # any replica answers the 4xx
        if not isinstance(body, dict):
            return RouteKey()
        previous = body.get("previous_response_id")
        if request.path == "/v1/responses" and isinstance(previous, str) and self._live_owner(previous):
            return RouteKey(pinned_replica=self._live_owner(previous))
        return RouteKey(block_hashes(prompt_text(request.path, body)))

    def _live_owner(self, response_id: str) -> str | None:
        router = active_router()
        owner = self.response_owner.get(response_id)
        return owner if router is not None and owner in router.replica_ids else None

    def _send(self, request: ForwardedRequest, key: RouteKey) -> DeploymentResponseGenerator[Any]:
        """Call a replica's `handle_http`; Ray Serve's router picks the replica from `key`. Each call is its own
        Serve request (`own_serve_request`)."""
        call = own_serve_request()
        return cast(
            DeploymentResponseGenerator[Any],
            call.run(self.replicas.handle_http.remote, request, route=key),
        )

    async def _forward(self, request: ForwardedRequest, key: RouteKey) -> Response:
        for attempt in (1, 2):
            stream = self._send(request, key)
            try:
                start = await _begun(stream, self.silence_s)
                first: list[bytes] = []
                ended = False
                try:  # hold the response until its first body chunk: a death before it can still be retried
                    first.append(await _next(stream, self.silence_s))
                except StopAsyncIteration:
                    ended = True
            except ReplicaSilentError as exc:  # not retried: a second wait as long would double the client's
                self.failures += 1
                logger.warning("%s %s: %s", request.method, request.path, exc)
                return error_response(ReplicaFailedError(str(exc)), request.path)
            except REPLICA_DIED as exc:
                close(stream)
                if attempt == 1:
                    self.retries += 1
                    logger.warning("%s %s: replica died before answering (%s); retrying once", request.method,
                                   request.path, type(exc).__name__)  # fmt: skip
                    continue
                self.failures += 1
                return error_response(ReplicaFailedError(), request.path)
            except Exception:  # a failure of the call itself, not of a replica's process
                close(stream)
                logger.exception("%s %s: forwarding failed", request.method, request.path)
                return internal_error_response(request.path)
            break
        assert isinstance(start, ResponseStart)
        self._remember_response_owner(request, start, first)
        # Ray Serve's proxy sets X-Request-Id on every response itself (the client's, or its own id, which the
        # replica adopted as the request's id): the replica's copy would repeat it.
        incoming_id = dict(request.headers).get(b"x-request-id")
        headers = [(k, v) for k, v in start.headers if k.lower() not in HOP_BY_HOP
                   and not (k.lower() == b"x-request-id" and v == incoming_id)]  # fmt: skip
        response = StreamingResponse(self._relay(request, start, stream, first, ended), status_code=start.status)
        response.raw_headers = headers
        return response

    async def _relay(
        self, request: ForwardedRequest, start: ResponseStart, stream: Any, first: list[bytes], ended: bool
    ) -> AsyncIterator[bytes]:
        try:
            for chunk in first:
                yield chunk
            if ended:
                return
            try:
                while True:
                    try:
                        chunk = await _next(stream, self.silence_s)
                    except StopAsyncIteration:
                        break
                    yield chunk
            except Exception as exc:  # the replica died (or the call failed) after the response began
                self.failures += 1
                logger.warning("%s %s: response cut short: %s", request.method, request.path, type(exc).__name__)
                if (start.header("content-type") or "").startswith("text/event-stream"):
                    yield stream_error_event(request.path, ReplicaFailedError())
        finally:
            close(stream)  # the client went away (or we are done): the replica sees a disconnect

    def _remember_response_owner(self, request: ForwardedRequest, start: ResponseStart, first: list[bytes]) -> None:
        replica = start.header(REPLICA_HEADER)
        if request.path != "/v1/responses" or replica is None or not first:
            return
        found = _RESPONSE_ID.search(first[0])
        if found:
            self.response_owner[found.group(1).decode()] = replica
            while len(self.response_owner) > MAX_RESPONSE_OWNERS:
                self.response_owner.popitem(last=False)

    # ---- health and metrics, asked of every replica ----
    async def _ask_each(self, path: str) -> dict[str, tuple[int, bytes]]:
        router = active_router()
        if router is None or not router.replica_ids:
            # The handle makes its router at its first call: one unpinned probe brings it (and the replica list).
            answer = await self._ask(path, RouteKey())
            return {} if answer is None else {answer[0]: (answer[1], answer[2])}
        results = await asyncio.gather(*(self._ask(path, RouteKey(pinned_replica=r))
                                         for r in router.replica_ids))  # fmt: skip
        return {r[0]: (r[1], r[2]) for r in results if r is not None}

    async def _ask(self, path: str, key: RouteKey) -> tuple[str, int, bytes] | None:
        stream = self._send(ForwardedRequest("GET", path), key)

        async def collect() -> tuple[ResponseStart, bytes]:
            start = await stream.__anext__()
            return start, b"".join([chunk async for chunk in stream])

        # Not cancelled on timeout (see `_begun`): a late answer is read to its end in the background and dropped.
        task = asyncio.ensure_future(collect())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        done, _ = await asyncio.wait({task}, timeout=PROBE_TIMEOUT_S)
        if not done or task.exception() is not None:
            return None
        start, body = task.result()
        return start.header(REPLICA_HEADER) or key.pinned_replica or "?", start.status, body

    async def _health(self) -> Response:
        answers = await self._ask_each("/health")
        if any(status == 200 for status, _ in answers.values()):
            return JSONResponse({"status": "healthy"})
        return JSONResponse({"detail": "Model or tokenizer not loaded"}, status_code=503)

    async def _metrics(self) -> Response:
        answers = await self._ask_each("/metrics")
        text = merge_metrics({r: body.decode() for r, (status, body) in answers.items() if status == 200})
        return Response(text + self._own_metrics(answers), media_type="text/plain; version=0.0.4; charset=utf-8")

    def _own_metrics(self, answers: dict[str, tuple[int, bytes]]) -> str:
        router = active_router()
        lines = [
            "# HELP qwen3_api_replicas Engine replicas the ingress routes to",
            "# TYPE qwen3_api_replicas gauge",
            f"qwen3_api_replicas {len(router.replica_ids) if router else 0}",
            "# HELP qwen3_api_replicas_answering Replicas that answered this scrape",
            "# TYPE qwen3_api_replicas_answering gauge",
            f"qwen3_api_replicas_answering {len(answers)}",
            "# HELP qwen3_api_ingress_retries_total Requests sent again after their replica died before answering",
            "# TYPE qwen3_api_ingress_retries_total counter",
            f"qwen3_api_ingress_retries_total {self.retries}",
            "# HELP qwen3_api_ingress_replica_failures_total Requests answered with an error because replicas died",
            "# TYPE qwen3_api_ingress_replica_failures_total counter",
            f"qwen3_api_ingress_replica_failures_total {self.failures}",
        ]
        if router is not None:
            lines += ["# HELP qwen3_api_router_decisions_total Requests routed, by replica and reason",
                      "# TYPE qwen3_api_router_decisions_total counter"]  # fmt: skip
            for (replica, reason), count in sorted(router.decisions.items()):
                lines.append(f'qwen3_api_router_decisions_total{{replica="{replica}",reason="{reason}"}} {count}')
            lines += ["# HELP qwen3_api_router_in_flight Requests the ingress has in flight, by replica",
                      "# TYPE qwen3_api_router_in_flight gauge"]  # fmt: skip
            for replica in router.replica_ids:
                lines.append(f'qwen3_api_router_in_flight{{replica="{replica}"}} {router.load(replica)}')
        return "\n".join(lines) + "\n"


def own_serve_request() -> contextvars.Context:
    """A context in which a handle call gets an internal request id of its own.

    A handle call made while serving a request inherits that request's internal id, and Ray Serve's request router
    keys its pending requests by it: two calls of one ingress request in flight together (the `/health` and
    `/metrics` probes of every replica, a retry while the first call is cleaned up) overwrite each other's entry,
    one call is handed the replica chosen for the other and the other is never routed (seen: a probe waiting its
    full timeout, and load counts that never drop, sending every request to one replica). The user-visible request
    id (`request_id`, the X-Request-Id) is kept.
    """
    context = contextvars.copy_context()
    current = serve_context._get_serve_request_context()
    fresh = dataclasses.replace(current, _internal_request_id=uuid.uuid4().hex)
    context.run(serve_context._serve_request_context.set, fresh)  # type: ignore[arg-type]  # typed by its default
    return context


def close(stream: DeploymentResponseGenerator[Any]) -> None:
    """Cancel a call (best effort). Serve's `cancel` re-raises the error of a call whose assignment failed (the
    replica died meanwhile): that error is already handled or reported where the call was awaited."""
    try:
        stream.cancel()
    except Exception as exc:  # noqa: BLE001
        logger.debug("cancelling a failed call: %s", type(exc).__name__)


def _close_when_done(first: asyncio.Future[Any], stream: DeploymentResponseGenerator[Any]) -> None:
    if not first.cancelled():
        first.exception()  # retrieved: a late failure is not "never retrieved"
    close(stream)


class ReplicaSilentError(Exception):
    """No replica accepted a request, or its replica sent nothing, within the ingress' bound."""


def silence_limit(settings: Settings) -> float:
    """Seconds the ingress waits for a replica to accept a request, or for the next item of its response."""
    if settings.request_timeout <= 0:
        return NO_TIMEOUT_SILENCE_S
    return settings.request_timeout + REPLICA_GRACE_S


async def _assigned(stream: DeploymentResponseGenerator[Any], timeout: float) -> None:
    """Wait until Ray Serve's router has sent the call to a replica; past `timeout` the call is withdrawn.

    Serve's handle offers no public wait for the assignment alone (its first item may come only when a whole
    non-streamed answer is ready), hence its `_fetch_future_result_async`. Cancelling a call not yet assigned
    only withdraws it from the router's queue.
    """
    assignment = asyncio.ensure_future(stream._fetch_future_result_async())
    done, _ = await asyncio.wait({assignment}, timeout=timeout)
    if not done:
        assignment.cancel()
        close(stream)
        raise ReplicaSilentError(f"No replica accepted the request within {timeout:g} s; send it again")
    assignment.result()  # a replica's death while assigning surfaces here


async def _next(stream: DeploymentResponseGenerator[Any], timeout: float) -> Any:
    """The next item of a begun stream; a replica silent for `timeout` seconds is given up on."""
    try:
        return await asyncio.wait_for(stream.__anext__(), timeout)
    except TimeoutError:
        raise ReplicaSilentError(f"The replica sent nothing for {timeout:g} s; send the request again") from None


async def _begun(stream: DeploymentResponseGenerator[Any], timeout: float) -> Any:
    """The first item of a replica's stream, its ResponseStart (bounded by `timeout` for the assignment, and as
    much again for the start itself).

    A call that is assigned to a replica but has not begun is not cancelled (a cancel racing the replica's
    acceptance is the least tested path of Serve's handle): when the caller goes away meanwhile (the client hung
    up), or gives up waiting, the call goes on, and its stream is closed once it has begun, which the replica sees
    as a disconnect and aborts in its engine.
    """
    await _assigned(stream, timeout)
    first = asyncio.ensure_future(stream.__anext__())
    try:
        done, _ = await asyncio.wait({first}, timeout=timeout)  # (asyncio.wait never cancels what it waits on)
    except asyncio.CancelledError:
        first.add_done_callback(lambda _: close(stream))
        raise
    if not done:
        first.add_done_callback(lambda t: _close_when_done(t, stream))
        raise ReplicaSilentError(f"The replica did not begin its answer within {timeout:g} s; send the request again")
    return first.result()
