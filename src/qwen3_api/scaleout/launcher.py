"""`qwen3-api serve --replicas N`: start (or join) a Ray cluster, run the application, wait for a signal."""

from __future__ import annotations

import logging
import signal
import threading

import ray
from ray import serve

from qwen3_api.config import Settings
from qwen3_api.scaleout.application import APP_NAME, build_application

logger = logging.getLogger(__name__)


def serve_replicas(settings: Settings) -> None:
    """Run the scaled-out server until SIGTERM/SIGINT, then delete the application (its replicas drain)."""
    if settings.ray_address:
        ray.init(address=settings.ray_address, namespace="qwen3-api", log_to_driver=True)
        logger.info("joined the Ray cluster at %s", settings.ray_address)
    else:
        # "local": a new cluster of our own, even where `ray start` left one running (which ray.init() would join)
        ray.init(address="local", namespace="qwen3-api", include_dashboard=False, log_to_driver=True)
        logger.info("started a local Ray cluster: %s CPUs", ray.cluster_resources().get("CPU"))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build_application(settings), name=APP_NAME, route_prefix="/", blocking=False)
        logger.info("listening on http://%s:%d (ingress; %s)", settings.host, settings.port, _replicas(settings))
        stop.wait()
        logger.info("stopping: deleting the application")
        serve.delete(APP_NAME)
        if not settings.ray_address:
            serve.shutdown()
    finally:
        ray.shutdown()


def _replicas(settings: Settings) -> str:
    if settings.min_replicas is not None or settings.max_replicas is not None:
        return f"autoscaled replicas {settings.min_replicas}..{settings.max_replicas}"
    return f"{settings.replicas} replicas"
