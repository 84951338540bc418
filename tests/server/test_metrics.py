"""GET /metrics exposes engine gauges and request counters in Prometheus' format."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServerProcess


def scrape(server: ServerProcess) -> dict[str, float]:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    return {
        sample.name + str(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_requests_and_prefix_hits(torch_server: ServerProcess) -> None:
    before = scrape(torch_server)
    prompt = {"prompt": "the same long prompt " * 12, "max_length": 2, "temperature": 0}
    fresh = {"Cache-Control": "no-cache"}  # computed by the engine both times, not answered by the response cache
    for _ in range(2):
        assert requests.post(f"{torch_server.url}/generate", json=prompt, headers=fresh, timeout=60).status_code == 200
    after = scrape(torch_server)
    key = "qwen3_api_requests_total[('route', '/generate'), ('status', '200')]"
    assert after[key] - before.get(key, 0) == 2
    assert after["qwen3_api_model_loaded[]"] == 1
    hits = "qwen3_api_engine_prefix_hit_tokens_total[]"  # a counter: it only grows
    assert after[hits] - before[hits] >= 32  # the second request reused the first one's full blocks
    assert 0 <= after["qwen3_api_engine_kv_usage[]"] <= 1
