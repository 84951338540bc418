"""GET /metrics in Prometheus' text format: engine gauges and counters read at scrape time, request counters,
token counters and latency histograms (filled by the access-log middleware from each request's record)."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from qwen3_api.server.request_context import RequestRecord
from qwen3_api.server.response_cache import ResponseCache
from qwen3_api.server.state import ServerState

router = APIRouter()

ENGINE_GAUGES = {
    "waiting": "Requests waiting to be scheduled",
    "running": "Requests in the running batch",
    "kv_usage": "Fraction of KV cache blocks held by sequences",
    "prefix_hit_rate": "Fraction of looked-up prompt tokens served from the prefix cache",
    "kv_blocks_used": "KV cache blocks held by sequences",
    "kv_blocks_total": "KV cache blocks in all",
    "host_cache_bytes": "Bytes of finished conversations' llama.cpp KV held in host memory",
    "host_cache_entries": "Finished conversations held in the llama.cpp host-memory cache",
}
# Engine statistics that only grow: exported as counters (`..._total`), so rate() works on them.
ENGINE_COUNTERS = {
    "prefix_queried_tokens": "Prompt tokens looked up in the prefix cache",
    "prefix_hit_tokens": "Prompt tokens served from the prefix cache",
    "preemptions": "Sequences preempted (recomputed later) since start",
    "spec_decode_draft_tokens": "Speculative draft tokens proposed and verified",
    "spec_decode_accepted_tokens": "Speculative draft tokens accepted (equal to what the sampler chose)",
    "spec_decode_full_batch_steps": "Steps decoded without speculation because more sequences decoded than "
    "--speculative-max-batch",
    "host_cache_saved": "Conversations saved to the llama.cpp host-memory cache when their sequence was needed",
    "host_cache_restored": "Prefix hits served by copying a saved conversation back from host memory",
    "host_cache_evicted": "Saved conversations dropped from the llama.cpp host-memory cache for room",
    "steps": "Engine steps run",
    "step_seconds": "Seconds spent in engine steps (rate: the fraction of time the engine computes)",
    "forward_seconds": "Seconds of engine steps spent in the model's forward pass",
    "decode_steps": "Engine steps that only decoded (one new token per sequence)",
    "decode_step_seconds": "Seconds spent in decode-only steps (divided by decode_steps: the time per output token "
    "of the running batch, before output processing)",
}

# Bucket bounds in seconds, spanning a tiny model on a GPU to a 4B model on two CPU cores.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)
TPOT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5, 10)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560)


class EngineCollector(Collector):
    """Reads the engine's counters when Prometheus scrapes."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
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
        for name, help_text in ENGINE_COUNTERS.items():
            if name in stats:
                yield CounterMetricFamily(f"qwen3_api_engine_{name}", help_text, value=stats[name])
        yield CounterMetricFamily(
            "qwen3_api_engine_output_seconds", "Seconds the engine loop spent on steps' outputs (detokenizing, stop "
            "strings, handing them to requests), between steps", value=engine.output_seconds,
        )  # fmt: skip


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
        registry = self.registry
        self.ttft = Histogram("qwen3_api_time_to_first_token_seconds", "Request arrival to its first generated "
                              "token", buckets=TTFT_BUCKETS, registry=registry)  # fmt: skip
        self.tpot = Histogram("qwen3_api_time_per_output_token_seconds", "Mean time between a request's tokens "
                              "after the first", buckets=TPOT_BUCKETS, registry=registry)  # fmt: skip
        self.e2e = Histogram("qwen3_api_e2e_request_latency_seconds", "Arrival to the end of the response, of "
                             "generation requests", buckets=E2E_BUCKETS, registry=registry)  # fmt: skip
        self.queue_time = Histogram("qwen3_api_queue_time_seconds", "Time a request waited in the engine before "
                                    "its first step", buckets=TTFT_BUCKETS, registry=registry)  # fmt: skip
        self.prompt_tokens = Counter("qwen3_api_prompt_tokens", "Prompt tokens of generation requests",
                                     registry=registry)  # fmt: skip
        self.generation_tokens = Counter("qwen3_api_generation_tokens", "Tokens generated", registry=registry)

    def observe_request(self, record: RequestRecord, e2e: float) -> None:
        """Latency and token metrics of one finished generation request."""
        if not record.generation:
            return
        self.e2e.observe(e2e)
        self.prompt_tokens.inc(record.prompt_tokens)
        self.generation_tokens.inc(record.completion_tokens)
        ttft = record.ttft
        if ttft is not None:
            self.ttft.observe(ttft)
            if record.completion_tokens > 1:
                self.tpot.observe((e2e - ttft) / (record.completion_tokens - 1))
        if record.queue_time is not None:
            self.queue_time.observe(record.queue_time)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    server_metrics: ServerMetrics = request.app.state.metrics
    return Response(generate_latest(server_metrics.registry), media_type=CONTENT_TYPE_LATEST)
