"""The FastAPI application: listens at once, loads the engine in the background, serves every API."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from qwen3_api import __version__
from qwen3_api.config import Settings
from qwen3_api.errors import Qwen3APIError
from qwen3_api.server import metrics, native
from qwen3_api.server.access_log import RequestContextMiddleware
from qwen3_api.server.admission import Admission
from qwen3_api.server.anthropic import router as anthropic_router
from qwen3_api.server.auth import APIKeyMiddleware, load_api_keys
from qwen3_api.server.body_limit import BodyLimitMiddleware
from qwen3_api.server.cached_generation import ResponseCacheMiddleware
from qwen3_api.server.errors import install_error_handlers
from qwen3_api.server.openai import router as openai_router
from qwen3_api.server.playground import install_playground
from qwen3_api.server.response_cache import ResponseCache
from qwen3_api.server.state import ServerState

if TYPE_CHECKING:
    from qwen3_api.engine.async_engine import AsyncEngine

logger = logging.getLogger(__name__)

EngineLoader = Callable[[Settings], "AsyncEngine"]


def _default_loader(settings: Settings) -> AsyncEngine:
    from qwen3_api.runtime.loader import load_engine  # imports torch: only ever in the loading thread

    return load_engine(settings)


def _load_in_background(
    state: ServerState,
    loader: EngineLoader,
    loop: asyncio.AbstractEventLoop,
    on_failure: Callable[[], None] | None,
    on_engine_death: Callable[[], None] | None = None,
) -> None:
    try:
        engine = loader(state.settings)
    except Qwen3APIError as exc:  # expected failures (model not found, hub unreachable): one clear line
        state.load_error = str(exc)
        logger.error("model loading failed: %s", exc)
    except Exception as exc:
        state.load_error = str(exc)
        logger.exception("model loading failed")
    else:

        def died(reason: str) -> None:
            logger.critical("the engine loop died (%s): /health and /live answer 503 from now on", reason)
            if on_engine_death is not None:
                on_engine_death()

        def publish() -> None:
            engine.start(loop, on_death=died)
            state.engine = engine
            logger.info("ready: serving %s", engine.model_name)

        loop.call_soon_threadsafe(publish)
        return
    if on_failure is not None:
        loop.call_soon_threadsafe(on_failure)


def _response_cache(settings: Settings) -> ResponseCache:
    cache = ResponseCache(int(settings.response_cache_mb * 2**20), settings.response_cache_ttl)
    if cache.enabled:
        logger.info("response cache: %g MiB, TTL %g s", settings.response_cache_mb, settings.response_cache_ttl)
    else:
        logger.info("response cache: off (--response-cache-mb 0)")
    return cache


def create_app(
    settings: Settings,
    loader: EngineLoader = _default_loader,
    on_load_failure: Callable[[], None] | None = None,
    on_engine_death: Callable[[], None] | None = None,
) -> FastAPI:
    """The app for `settings`; the model loads in a background thread so /health answers 503 meanwhile.

    `on_load_failure` runs on the event loop when loading fails (the CLI uses it to exit instead of serving 503s);
    `on_engine_death` when the engine loop dies (the CLI exits non-zero so that a supervisor restarts it).
    """
    state = ServerState(settings=settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        thread = threading.Thread(
            target=_load_in_background,
            args=(state, loader, loop, on_load_failure, on_engine_death),
            name="model-loader",
            daemon=True,
        )
        thread.start()
        yield
        if state.engine is not None:
            await asyncio.to_thread(state.engine.shutdown)

    app = FastAPI(title="Qwen3-4B API", version=__version__, lifespan=lifespan)
    app.state.server = state
    app.state.response_cache = _response_cache(settings)
    app.state.metrics = metrics.ServerMetrics(state)
    app.state.metrics.registry.register(metrics.ResponseCacheCollector(app.state.response_cache))
    install_error_handlers(app)
    app.add_middleware(ResponseCacheMiddleware)


    _install_hardening(app, settings)
    app.include_router(native.router)
    app.include_router(openai_router.router)
    app.include_router(anthropic_router.router)
    app.include_router(metrics.router)
    install_playground(app)
    return app


def _install_hardening(app: FastAPI, settings: Settings) -> None:
    """Admission control and the ASGI middleware around every route; from the outside in: request id, access log
    and catch-all 500 -> CORS -> API key -> body size limit -> the routes."""
    app.state.admission = Admission(settings.max_queued_requests)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    keys = load_api_keys(settings.api_keys, settings.api_key_file)
    if keys:
        app.add_middleware(APIKeyMiddleware, keys=keys)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-Id", "x-api-key"],
            expose_headers=["X-Request-Id", "Retry-After"],
        )
    app.add_middleware(RequestContextMiddleware, metrics=app.state.metrics)
