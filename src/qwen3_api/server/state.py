"""The server's view of the engine: not loaded yet, loaded, or failed to load."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from qwen3_api.config import Settings
from qwen3_api.engine.async_engine import AsyncEngine
from qwen3_api.errors import ModelNotReadyError, ServerShuttingDownError


@dataclass
class ServerState:
    """Shared by all routes through `app.state.server`."""

    settings: Settings
    engine: AsyncEngine | None = None
    load_error: str | None = None
    shutting_down: bool = False  # set on SIGTERM/SIGINT: new generation requests get 503

    @property
    def model_name(self) -> str:
        return self.engine.model_name if self.engine is not None else self.settings.model


# Dependencies are coroutines: FastAPI runs a plain function dependency in a worker thread, a thread handoff per
# dependency per request (measured: most of a response-cache hit's latency on a busy 2-core machine).
async def server_state(request: Request) -> ServerState:
    """Dependency: the server state."""
    state: ServerState = request.app.state.server
    return state


async def ready_engine(request: Request) -> AsyncEngine:
    """Dependency: the loaded engine, or 503 while it is loading or if loading failed."""
    state: ServerState = request.app.state.server
    if state.shutting_down:
        raise ServerShuttingDownError()
    engine = state.engine
    if engine is None:
        raise ModelNotReadyError("Model or tokenizer not loaded")
    engine.check_accepting()
    return engine
