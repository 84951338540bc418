"""Each call the ingress makes to a replica is its own Ray Serve request, under the client's request id."""

from __future__ import annotations

import pytest

pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'qwen3-api[ray]')")

from ray.serve import context as serve_context  # noqa: E402

from qwen3_api.scaleout.ingress import own_serve_request  # noqa: E402


def test_calls_of_one_request_get_distinct_internal_ids_and_keep_the_request_id() -> None:
    serve_context._serve_request_context.set(
        serve_context._RequestContext(request_id="client-id", _internal_request_id="ingress-call", route="/health")
    )
    seen = [own_serve_request().run(serve_context._get_serve_request_context) for _ in range(3)]
    assert len({context._internal_request_id for context in seen}) == 3
    assert "ingress-call" not in {context._internal_request_id for context in seen}
    assert {(context.request_id, context.route) for context in seen} == {("client-id", "/health")}
    assert serve_context._get_serve_request_context()._internal_request_id == "ingress-call"  # caller's untouched
