"""Per-request measurements and their summary, with vLLM's benchmark definitions.

TTFT = time of the first streamed token event - send time; TPOT = (e2e - TTFT) / (output tokens - 1), over
requests with more than one output token; ITL = gaps between consecutive streamed token events (so several tokens
arriving in one event count as one gap). Without streaming, TTFT = e2e and TPOT/ITL are not measured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class RequestOutput:
    """What one request measured. Times are seconds on `time.perf_counter`'s clock."""

    success: bool = False
    error: str = ""
    prompt_tokens: int | None = None
    output_tokens: int = 0
    output_tokens_source: str = "stream events"  # or "usage", "re-tokenized text", "assumed max_tokens"
    ttft: float = 0.0
    e2e: float = 0.0
    itl: list[float] = field(default_factory=list)
    streamed: bool = True
    text_events: int = 0
    text: str = ""

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first, or None when it is not defined."""
        # A stream whose text all came at the end (random-weight chat output is often invisible) has no TTFT
        # distinct from e2e, so no per-token time either.
        if not self.streamed or self.output_tokens < 2 or self.text_events == 0:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation, as numpy's default."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Stats:
    """Mean, median, 90th and 99th percentile of one metric, in milliseconds; NaN when nothing was measured."""

    mean: float
    p50: float
    p99: float
    count: int
    p90: float = math.nan  # last, so results saved before it existed still load

    @classmethod
    def of_seconds(cls, values: Sequence[float]) -> Stats:
        ms = [v * 1000.0 for v in values]
        mean = sum(ms) / len(ms) if ms else math.nan
        return cls(mean=mean, p50=percentile(ms, 50), p99=percentile(ms, 99), count=len(ms), p90=percentile(ms, 90))


@dataclass
class BenchResult:
    """The summary of one load-generator run (one API, one concurrency)."""

    api: str
    url: str
    model: str | None
    num_requests: int
    concurrency: int
    prompt_tokens_target: int
    output_tokens_target: int
    completed: int
    failed: int
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    ttft_ms: Stats
    tpot_ms: Stats
    itl_ms: Stats
    e2e_ms: Stats
    streamed: bool
    output_tokens_counted_by: str
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def decode_tokens_per_s(self) -> float:
        """Per-request decode speed, 1 / mean TPOT (NaN when TPOT was not measured)."""
        return 1000.0 / self.tpot_ms.mean if self.tpot_ms.count and self.tpot_ms.mean > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["decode_tokens_per_s"] = self.decode_tokens_per_s
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchResult:
        """The result `to_dict` wrote (a saved JSON), for re-plotting without rerunning."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        for stat in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
            values[stat] = Stats(**{k: v for k, v in data[stat].items() if k in {f.name for f in fields(Stats)}})
        return cls(**values)


def summarize(
    outputs: Sequence[RequestOutput],
    duration_s: float,
    *,
    api: str,
    url: str,
    model: str | None,
    concurrency: int,
    prompt_tokens_target: int,
    output_tokens_target: int,
    notes: Sequence[str] = (),
) -> BenchResult:
    """Aggregate per-request outputs into a `BenchResult`."""
    ok = [o for o in outputs if o.success]
    counted_by = sorted({o.output_tokens_source for o in ok}) or ["-"]
    total_out = sum(o.output_tokens for o in ok)
    return BenchResult(
        api=api,
        url=url,
        model=model,
        num_requests=len(outputs),
        concurrency=concurrency,
        prompt_tokens_target=prompt_tokens_target,
        output_tokens_target=output_tokens_target,
        completed=len(ok),
        failed=len(outputs) - len(ok),
        duration_s=duration_s,
        total_input_tokens=sum(o.prompt_tokens or 0 for o in ok),
        total_output_tokens=total_out,
        request_throughput=len(ok) / duration_s if duration_s > 0 else math.nan,
        output_throughput=total_out / duration_s if duration_s > 0 else math.nan,
        ttft_ms=Stats.of_seconds([o.ttft for o in ok]),
        tpot_ms=Stats.of_seconds([t for o in ok if (t := o.tpot) is not None]),
        itl_ms=Stats.of_seconds([gap for o in ok if o.streamed for gap in o.itl]),
        e2e_ms=Stats.of_seconds([o.e2e for o in ok]),
        streamed=all(o.streamed for o in ok) if ok else False,
        output_tokens_counted_by=", ".join(counted_by),
        notes=list(notes),
        errors=sorted({o.error for o in outputs if not o.success})[:5],
    )


def format_result(result: BenchResult) -> str:
    """A vLLM-style text table of `result`."""
    width = 50
    lines = [
        f"{' Serving Benchmark Result ':=^{width}}",
        f"{'API:':<32}{result.api:>18}",
        f"{'Concurrency:':<32}{result.concurrency:>18}",
        f"{'Successful requests:':<32}{result.completed:>18}",
        f"{'Failed requests:':<32}{result.failed:>18}",
        f"{'Benchmark duration (s):':<32}{result.duration_s:>18.2f}",
        f"{'Total input tokens:':<32}{result.total_input_tokens:>18}",
        f"{'Total generated tokens:':<32}{result.total_output_tokens:>18}",
        f"{'Request throughput (req/s):':<32}{result.request_throughput:>18.2f}",
        f"{'Output token throughput (tok/s):':<32}{result.output_throughput:>18.2f}",
    ]
    for title, stats in (
        ("Time to First Token", result.ttft_ms),
        ("Time per Output Token (excl. 1st token)", result.tpot_ms),
        ("Inter-token Latency", result.itl_ms),
        ("End-to-end Latency", result.e2e_ms),
    ):
        short = title.split(" (")[0]
        abbrev = {
            "Time to First Token": "TTFT",
            "Time per Output Token": "TPOT",
            "Inter-token Latency": "ITL",
        }.get(short, "E2E")
        lines.append(f"{' ' + title + ' ':-^{width}}")
        lines.append(f"{f'Mean {abbrev} (ms):':<32}{stats.mean:>18.2f}")
        lines.append(f"{f'Median {abbrev} (ms):':<32}{stats.p50:>18.2f}")
        lines.append(f"{f'P99 {abbrev} (ms):':<32}{stats.p99:>18.2f}")
    lines.append("=" * width)
    lines.append(f"output tokens counted by: {result.output_tokens_counted_by}")
    lines.extend(f"note: {note}" for note in result.notes)
    lines.extend(f"error: {error}" for error in result.errors)
    return "\n".join(lines)
