"""Merging replicas' /metrics: every sample labelled by replica, each family's samples together, still parseable."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from qwen3_api.scaleout.metrics_merge import merge_metrics


def exposition(requests: int, loaded: float) -> str:
    registry = CollectorRegistry()
    counter = Counter("qwen3_api_requests", "HTTP requests", ["route", "status"], registry=registry)
    counter.labels(route="/v1/responses/{response_id}", status="200").inc(requests)
    Gauge("qwen3_api_model_loaded", "loaded", registry=registry).set(loaded)
    return generate_latest(registry).decode()


def test_merge_labels_every_sample_and_keeps_families_whole() -> None:
    merged = merge_metrics({"r1": exposition(3, 1), "r2": exposition(5, 0)})
    families = {f.name: f for f in text_string_to_metric_families(merged)}
    requests = [s for s in families["qwen3_api_requests"].samples if s.name == "qwen3_api_requests_total"]
    assert {(s.labels["replica"], s.labels["route"], s.value) for s in requests} == {
        ("r1", "/v1/responses/{response_id}", 3.0),
        ("r2", "/v1/responses/{response_id}", 5.0),
    }
    loaded = {s.labels["replica"]: s.value for s in families["qwen3_api_model_loaded"].samples}
    assert loaded == {"r1": 1.0, "r2": 0.0}
    assert merged.count("# TYPE qwen3_api_model_loaded gauge") == 1
