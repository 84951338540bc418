"""GET /metrics in Prometheus' text format: engine gauges read at scrape time, request and token counters."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from qwen3_api.server.response_cache import ResponseCache
from qwen3_api.server.state import ServerState

router = APIRouter()

ENGINE_GAUGES = {
    "waiting": "Requests waiting to be scheduled",
    "running": "Requests in the running batch",
    "kv_usage": "Fraction of KV cache blocks held by sequences",
    "prefix_hit_rate": "Fraction of looked-up prompt tokens served from the prefix cache",
    "prefix_queried_tokens": "Prompt tokens looked up in the prefix cache",
    "prefix_hit_tokens": "Prompt tokens served from the prefix cache",
    "preemptions": "Sequences preempted (recomputed later) since start",
}


class EngineCollector(Collector):
    """Reads the engine's counters when Prometheus scrapes."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        engine = self.state.engine
        yield GaugeMetricFamily("qwen3_api_model_loaded", "1 once the model is loaded", value=float(engine is not None))
        if engine is None:
            return
        yield GaugeMetricFamily(
            "qwen3_api_unfinished_requests", "Requests accepted and not finished", value=engine.num_unfinished_requests
        )
        stats = engine.core.stats()
        for name, help_text in ENGINE_GAUGES.items():
            if name in stats:
                yield GaugeMetricFamily(f"qwen3_api_engine_{name}", help_text, value=stats[name])


class ResponseCacheCollector(Collector):
    """The response cache's counters and size, read when Prometheus scrapes."""

    def __init__(self, cache: ResponseCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        prefix = "qwen3_api_response_cache"
        cache = self.cache
        yield CounterMetricFamily(f"{prefix}_hits", "Generation requests answered from the response cache "
                                  "(including those that waited for an identical one)", value=cache.hits)  # fmt: skip
        yield CounterMetricFamily(f"{prefix}_misses", "Cacheable generation requests computed", value=cache.misses)
        yield CounterMetricFamily(
            f"{prefix}_bypass", "Generation requests not looked up (not deterministic, or Cache-Control)",
            value=cache.bypasses,
        )  # fmt: skip
        yield GaugeMetricFamily(f"{prefix}_bytes", "Bytes of stored responses", value=cache.bytes)
        yield GaugeMetricFamily(f"{prefix}_entries", "Stored responses", value=cache.num_entries)
        yield GaugeMetricFamily(
            f"{prefix}_waiting", "Requests waiting for an identical request in flight", value=cache.waiting
        )


class ServerMetrics:
    """The registry of one app, with the counters its routes update."""

    def __init__(self, state: ServerState) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(EngineCollector(state))
        self.requests = Counter(
            "qwen3_api_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    server_metrics: ServerMetrics = request.app.state.metrics
    return Response(generate_latest(server_metrics.registry), media_type=CONTENT_TYPE_LATEST)
