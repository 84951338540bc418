"""One engine replica: the single-process server's app, run in a Ray Serve replica and fed by the ingress."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from qwen3_api.config import Settings
from qwen3_api.scaleout.asgi_bridge import ForwardedRequest, ResponseStart, serve_asgi
from qwen3_api.scaleout.routing import RouteKey

logger = logging.getLogger(__name__)

REPLICA_HEADER = "x-replica"
ENGINE_DEATH_EXIT_SECONDS = 1.0  # the replica answers 503 this long after its engine loop died, then exits


class EngineReplica:
    """A full engine (same settings as `qwen3-api serve`) behind the same FastAPI app; Ray Serve restarts it
    when its process dies or its health check fails."""

    async def __init__(self, settings: Settings) -> None:  # type: ignore[misc]  # Ray actors may construct async
        from ray import serve

        from qwen3_api.logging_setup import configure_logging
        from qwen3_api.server.app import create_app

        configure_logging(settings.log_level, settings.log_format)
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.app = create_app(settings, on_engine_death=self._exit_soon)
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()  # starts loading the model in the background, as the server does
        self._extra_headers = ((REPLICA_HEADER.encode(), self.replica_id.encode()),)
        logger.info("replica %s started", self.replica_id)

    async def handle_http(
        self, request: ForwardedRequest, route: RouteKey | None = None
    ) -> AsyncIterator[ResponseStart | bytes]:
        """Serve one forwarded request: its ResponseStart, then body chunks. `route` is for the router only."""
        async for item in serve_asgi(self.app, request, self._extra_headers):
            yield item

    def check_health(self) -> None:
        """Ray Serve's health check: a replica whose model failed to load is replaced."""
        state: Any = self.app.state.server
        if state.load_error:
            raise RuntimeError(f"model loading failed: {state.load_error}")

    def _exit_soon(self) -> None:
        # The engine loop died: every request already has its error. Exit so that Serve starts a fresh replica.
        logger.critical("replica %s: engine loop died, exiting", self.replica_id)
        asyncio.get_running_loop().call_later(ENGINE_DEATH_EXIT_SECONDS, os._exit, 1)
