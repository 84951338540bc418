"""The Ray Serve application: N engine replicas (or an autoscaled range) behind one ingress."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from qwen3_api.config import Settings
from qwen3_api.scaleout.ingress import Ingress
from qwen3_api.scaleout.ray_router import PrefixAwareRequestRouter
from qwen3_api.scaleout.replica import EngineReplica

APP_NAME = "qwen3-api"
REPLICA_DEPLOYMENT = "EngineReplica"
# Ray Serve's own queue in front of a replica: past our admission limit (which answers 503 itself) plus room for
# probes (/health, /metrics), so that a full replica refuses with our error instead of a hidden Ray queue.
PROBE_HEADROOM = 64


def replica_options(settings: Settings) -> dict[str, Any]:
    """Ray Serve options of the replica deployment: resources, routing, and fixed or autoscaled replica count."""
    options: dict[str, Any] = {
        "name": REPLICA_DEPLOYMENT,
        "ray_actor_options": {"num_cpus": settings.replica_cpus, "num_gpus": settings.replica_gpus},
        "max_ongoing_requests": settings.max_queued_requests + PROBE_HEADROOM,
        "health_check_period_s": 5,
        "graceful_shutdown_timeout_s": settings.shutdown_timeout,
        "request_router_config": RequestRouterConfig(
            # by import path: Serve pickles the router's module by value for the handle's process
            request_router_class=f"{PrefixAwareRequestRouter.__module__}.{PrefixAwareRequestRouter.__name__}",  # type: ignore[arg-type]
            request_router_kwargs={
                "overload_slack": settings.route_overload_slack,
                "overload_ratio": settings.route_overload_ratio,
                "min_match_ratio": settings.route_min_match_ratio,
                "policy": settings.routing,
            },
        ),
    }
    if settings.min_replicas is not None or settings.max_replicas is not None:
        low = settings.min_replicas if settings.min_replicas is not None else 1
        high = settings.max_replicas if settings.max_replicas is not None else max(low, settings.replicas)
        options["autoscaling_config"] = {
            "min_replicas": low,
            "max_replicas": high,
            "initial_replicas": min(max(settings.replicas, low), high),
            "target_ongoing_requests": settings.autoscale_target_ongoing_requests,
        }
    else:
        options["num_replicas"] = settings.replicas
    return options


def build_application(settings: Settings) -> Application:
    """The bound application for `serve.run`."""
    replicas = serve.deployment(EngineReplica).options(**replica_options(settings)).bind(settings)  # type: ignore[attr-defined]
    ingress = serve.deployment(Ingress).options(  # type: ignore[attr-defined]
        name="Ingress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=100_000
    )
    return ingress.bind(replicas, settings)


def app_builder(args: dict[str, Any]) -> Application:
    """The application for Serve config files (KubeRay's `serveConfigV2`):
    `import_path: qwen3_api.scaleout.application:app_builder`, `args` = Settings fields (QWEN3_API_* apply too)."""
    return build_application(Settings(**args))
