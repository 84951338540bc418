"""The load generator: vLLM's metric definitions, exact-length prompts, and a real run against our server."""

from __future__ import annotations

import math

import pytest

from qwen3_api.bench.apis import ApiKind
from qwen3_api.bench.loadgen import LoadConfig, run_benchmark
from qwen3_api.bench.metrics import RequestOutput, percentile, summarize
from qwen3_api.bench.prompts import PromptBuilder
from tests.conftest import ServerProcess


def test_tpot_and_percentiles_follow_vllm_definitions() -> None:
    out = RequestOutput(success=True, output_tokens=5, ttft=0.2, e2e=1.0, itl=[0.2, 0.2, 0.2, 0.2], text_events=5)
    assert out.tpot == pytest.approx(0.2)  # (1.0 - 0.2) / (5 - 1)
    assert RequestOutput(success=True, output_tokens=1, ttft=0.1, e2e=0.1, text_events=1).tpot is None
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile([5], 99) == 5 and math.isnan(percentile([], 50))
    result = summarize([out, RequestOutput(success=False, error="boom")], 2.0, api="x", url="u", model=None,
                       concurrency=2, prompt_tokens_target=8, output_tokens_target=5)  # fmt: skip
    assert (result.completed, result.failed, result.output_throughput) == (1, 1, 2.5)
    assert result.ttft_ms.p50 == pytest.approx(200) and result.errors == ["boom"]


def test_prompts_have_exact_token_lengths(tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    builder = PromptBuilder.from_tokenizer_dir(tiny_model_dir)
    for n in (1, 17, 64):
        assert builder.count_tokens(builder.prompt(n, seed=n)) == n
    first, second = builder.shared_prefix_pair(100, 0.9, seed=1)
    assert builder.count_tokens(first) == builder.count_tokens(second) == 100
    assert first[:40] == second[:40] and first != second


@pytest.mark.parametrize("api", [ApiKind.NATIVE, ApiKind.OPENAI_COMPLETIONS])
def test_load_run_against_our_server(torch_server: ServerProcess, tiny_model_dir, api: ApiKind) -> None:  # type: ignore[no-untyped-def]
    model = torch_server.model if api is not ApiKind.NATIVE else None
    config = LoadConfig(url=torch_server.url, api=api, model=model, num_requests=4, concurrency=2, prompt_tokens=16,
                        output_tokens=6, tokenizer_dir=tiny_model_dir)  # fmt: skip
    result = run_benchmark(config)
    assert (result.completed, result.failed) == (4, 0), result.errors
    assert result.total_output_tokens == 24 and result.streamed
    assert result.ttft_ms.count == 4 and result.tpot_ms.count == 4 and result.output_throughput > 0
