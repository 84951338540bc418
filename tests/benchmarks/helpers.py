"""Benchmark results built by the real summarizing code from made-up request timings."""

from __future__ import annotations

from qwen3_api.bench.metrics import BenchResult, RequestOutput, summarize


def result(output_tok_s: float, concurrency: int = 1, ttft_s: float = 0.1, tokens: int = 10) -> BenchResult:
    """A run whose output throughput is `output_tok_s`: 4 requests of `tokens` tokens each."""
    outputs = [RequestOutput(success=True, output_tokens=tokens, ttft=ttft_s, e2e=ttft_s + 0.05 * (tokens - 1),
                             itl=[0.05] * (tokens - 1), text_events=tokens) for _ in range(4)]  # fmt: skip
    return summarize(outputs, 4 * tokens / output_tok_s, api="openai-completions", url="http://x", model="m",
                     concurrency=concurrency, prompt_tokens_target=64, output_tokens_target=tokens)  # fmt: skip
