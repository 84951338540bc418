"""PNG pictures of benchmark results: output tokens/s vs concurrency per contender, TTFT and TPOT percentiles.

matplotlib is an optional dependency (the `bench` extra): serving never needs it, so it is imported only here.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import subprocess
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from qwen3_api.bench.metrics import BenchResult

# The figure's title, wrapped at this many characters (16-inch figure, 11-point font), each line this tall.
TITLE_WIDTH_CHARS = 150
TITLE_LINE_INCHES = 0.22


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def machine_description() -> str:
    """CPU model and core count, plus the GPU name where nvidia-smi knows one."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores"
    if shutil.which("nvidia-smi"):
        try:
            gpu = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
            ).stdout.strip().splitlines()
            text += f", {gpu[0]}" if gpu else ""
        except (OSError, subprocess.SubprocessError):
            pass
    return text


def _finite(value: float) -> float:
    return value if math.isfinite(value) else math.nan


def plot_results(
    series: Mapping[str, Sequence[BenchResult]], path: Path, model: str, subtitle: str = "", upper: str = "p99"
) -> Path:
    """Write one PNG with three panels for each contender's results (one result per concurrency)."""
    return plot_groups({"": series}, path, model, subtitle, upper)


def plot_groups(
    groups: Mapping[str, Mapping[str, Sequence[BenchResult]]],
    path: Path,
    model: str,
    subtitle: str = "",
    upper: str = "p99",
    machine: str | None = None,
) -> Path:
    """Write one PNG with a row of three panels (throughput, TTFT, TPOT vs concurrency) per group of contenders,
    e.g. one row per model file; `upper` is the dashed percentile (p90 or p99); `machine` defaults to this one."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailable("plots need matplotlib: pip install 'qwen3-api[bench]'") from exc

    figure, axes = plt.subplots(len(groups), 3, figsize=(16, 5.2 * len(groups)), squeeze=False)
    for (group, series), (throughput, ttft, tpot) in zip(groups.items(), axes, strict=True):
        _draw_group(series, throughput, ttft, tpot, upper)
        prefix = f"{group}: " if group else ""
        throughput.set_title(f"{prefix}output throughput")
        # Shorter names beside a group's name, so three titles still fit one row.
        ttft.set_title(f"{prefix}{'TTFT' if group else 'time to first token'} (p50 solid, {upper} dashed)")
        tpot.set_title(f"{prefix}{'TPOT' if group else 'time per output token'} (p50 solid, {upper} dashed)")
    title = f"{model} on {machine or machine_description()}"
    # Wrapped to the figure's width, and room kept above the panels for it (tight_layout ignores a suptitle).
    lines = [wrapped for part in (title, subtitle) if part for wrapped in textwrap.wrap(part, TITLE_WIDTH_CHARS)]
    figure.suptitle("\n".join(lines), fontsize=11)
    height = figure.get_figheight()
    figure.tight_layout(rect=(0, 0, 1, 1 - (0.25 + TITLE_LINE_INCHES * len(lines)) / height))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _draw_group(series: Mapping[str, Sequence[BenchResult]], throughput: Any, ttft: Any, tpot: Any, upper: str) -> None:
    markers = "osD^v<>"
    for i, (name, results) in enumerate(series.items()):
        ordered = sorted(results, key=lambda r: r.concurrency)
        cs = [r.concurrency for r in ordered]
        marker = markers[i % len(markers)]
        throughput.plot(cs, [_finite(r.output_throughput) for r in ordered], marker=marker, label=name)
        for axis, stat in ((ttft, "ttft_ms"), (tpot, "tpot_ms")):
            line = axis.plot(cs, [_finite(getattr(r, stat).p50) for r in ordered], marker=marker, label=f"{name} p50")
            axis.plot(cs, [_finite(getattr(getattr(r, stat), upper)) for r in ordered], marker=marker, linestyle="--",
                      color=line[0].get_color(), label=f"{name} {upper}")  # fmt: skip
    levels = sorted({r.concurrency for results in series.values() for r in results})
    for axis, label in ((throughput, "output tokens/s"), (ttft, "TTFT (ms)"), (tpot, "TPOT (ms)")):
        axis.set_xlabel("concurrency (requests in flight)")
        axis.set_ylabel(label)
        axis.set_xscale("log", base=2)
        axis.set_xticks(levels, [str(c) for c in levels])
        axis.minorticks_off()
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
        axis.set_ylim(bottom=0)
