"""Property-based fuzzing of every endpoint in /openapi.json against the real server: never a 5xx, never a hang."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings

# A short context: most generated token budgets are refused at once (4xx) and the rest finish in a few steps, so
# the whole run stays within about two minutes with the tiny model.
SHORT_CONTEXT = ("--backend", "torch", "--max-model-len", "64")
EXAMPLES_PER_OPERATION = 12


def test_no_server_error_and_no_hang_on_any_endpoint(tiny_model_dir, server_pool) -> None:  # type: ignore[no-untyped-def]
    server = server_pool.get(str(tiny_model_dir), *SHORT_CONTEXT)
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7, [op.label for op in operations]  # /, /health, /generate, /v1/..., /tokenize, ...
    seen: dict[str, set[int]] = {}

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=True, database=None)  # fmt: skip
        def check(case: Any) -> None:
            response = case.call(timeout=60)  # a hang fails here
            seen.setdefault(case.operation.label, set()).add(response.status_code)
            assert response.status_code < 500, (case.method, case.path, case.body, response.text)
            if response.status_code >= 400:  # every error is JSON in its API's shape
                body = response.json()
                assert ("error" in body) if case.path.startswith("/v1") else ("detail" in body), body

        check()
    assert set(seen) == {op.label for op in operations}
