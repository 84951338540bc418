"""Graceful shutdown: on SIGTERM/SIGINT, drain before uvicorn closes anything; exit 0 when done.

uvicorn on its own stops listening at the first signal (new clients get connection refused, not 503), gives
in-flight work `timeout_graceful_shutdown`, then re-raises the signal, so the process ends by SIGTERM instead of
exiting 0. Here the first signal starts a drain instead, while the server keeps listening:

1. new generation requests get 503 "Server is shutting down", `/health` 503 (load balancers stop sending);
2. unfinished requests run on for up to `shutdown_timeout` seconds;
3. the rest are aborted inside the engine and answered with that error (non-streamed 503, streamed an error
   event then `[DONE]`);
4. uvicorn then closes the connections and the lifespan stops the engine; the exit status is 0.

A second signal stops at once, as uvicorn's own second Ctrl-C does.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from types import FrameType

import uvicorn

from qwen3_api.errors import ServerShuttingDownError
from qwen3_api.server.state import ServerState

logger = logging.getLogger(__name__)

# After the engine has answered everything, responses still need to reach their clients before uvicorn closes
# the connections.
FLUSH_SECONDS = 5.0


async def drain(state: ServerState, timeout: float) -> None:
    """Refuse new requests, give unfinished ones `timeout` seconds, then abort the rest with an error."""
    state.shutting_down = True
    engine = state.engine
    if engine is None:
        return
    engine.drain()
    deadline = time.monotonic() + timeout
    while engine.num_unfinished_requests and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    left = engine.num_unfinished_requests
    if left:
        logger.warning("shutdown timeout of %g s passed: aborting %d unfinished requests", timeout, left)
        engine.abort_all(ServerShuttingDownError("Server is shutting down: the request was aborted"))
        deadline = time.monotonic() + FLUSH_SECONDS
        while engine.num_unfinished_requests and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    logger.info("drained; closing connections")


class GracefulServer(uvicorn.Server):
    """uvicorn's server with the drain above in front of its own shutdown."""

    def __init__(self, config: uvicorn.Config, state: ServerState, shutdown_timeout: float) -> None:
        super().__init__(config)
        self.state = state
        self.shutdown_timeout = shutdown_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)  # type: ignore[arg-type]

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in _captured_signals: uvicorn would re-raise it after shutdown and end by the signal.
        if self._loop is None or self.state.shutting_down or self.should_exit:
            logger.warning("signal %s again: stopping now", signal.Signals(sig).name)
            self.should_exit = True
            self.force_exit = self.force_exit or self.state.shutting_down
            return
        logger.info(
            "%s: draining (up to %g s for unfinished requests)", signal.Signals(sig).name, self.shutdown_timeout
        )
        self.state.shutting_down = True  # before the next request is read, even though the task starts later
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        async def run() -> None:
            try:
                await drain(self.state, self.shutdown_timeout)
            finally:
                self.should_exit = True

        self._drain_task = asyncio.ensure_future(run())
