"""Benchmark tooling: a load generator for OpenAI-compatible and native servers, and its metrics."""

from qwen3_api.bench.apis import ApiKind
from qwen3_api.bench.loadgen import LoadConfig, LoadGenerator, NoAcceptedStyle, run_benchmark, run_load
from qwen3_api.bench.metrics import BenchResult, RequestOutput, Stats, format_result
from qwen3_api.bench.prompts import PromptBuilder

__all__ = [
    "ApiKind",
    "BenchResult",
    "LoadConfig",
    "LoadGenerator",
    "NoAcceptedStyle",
    "PromptBuilder",
    "RequestOutput",
    "Stats",
    "format_result",
    "run_benchmark",
    "run_load",
]
