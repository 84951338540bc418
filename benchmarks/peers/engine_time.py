"""Where our server's time went during a row: the engine's own step counters (`/metrics`), read before and after,
set against the row's wall time. A client's TPOT above the engine's decode-step time is spent outside the engine."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

COUNTERS = ("steps", "step_seconds", "forward_seconds", "decode_steps", "decode_step_seconds", "output_seconds")


def scrape(url: str) -> dict[str, float]:
    """The engine's step counters, by short name."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    values = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    return {name: values.get(f"qwen3_api_engine_{name}_total", 0.0) for name in COUNTERS}


@dataclass
class EngineTime:
    """Means per step over one row, and the share of the row's wall time the engine spent stepping."""

    steps: int
    step_ms: float
    decode_steps: int
    decode_step_ms: float
    forward_share: float  # of step time
    output_ms_per_step: float
    busy: float  # step time / wall time

    @classmethod
    def between(cls, before: dict[str, float], after: dict[str, float], wall_s: float) -> EngineTime:
        d = {name: after[name] - before[name] for name in COUNTERS}
        steps, decode_steps = int(d["steps"]), int(d["decode_steps"])
        return cls(
            steps=steps,
            step_ms=1000 * d["step_seconds"] / max(steps, 1),
            decode_steps=decode_steps,
            decode_step_ms=1000 * d["decode_step_seconds"] / max(decode_steps, 1),
            forward_share=d["forward_seconds"] / d["step_seconds"] if d["step_seconds"] else 0.0,
            output_ms_per_step=1000 * d["output_seconds"] / max(steps, 1),
            busy=d["step_seconds"] / wall_s if wall_s > 0 else 0.0,
        )

    def describe(self) -> str:
        return (f"engine: {self.steps} steps, {self.decode_steps} decode-only at {self.decode_step_ms:.1f} ms, "
                f"forward {100 * self.forward_share:.0f} % of step time, outputs {self.output_ms_per_step:.2f} "
                f"ms/step, stepping {100 * self.busy:.0f} % of the row")  # fmt: skip

    def to_dict(self) -> dict[str, float]:
        return asdict(self)
