"""The rows of a `cpu_peers.py` run, the ratios they give (with the targets), their JSON file and their picture.

Everything here is pure (no server, no model), so a saved run can be re-printed and re-plotted (`--replot`).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qwen3_api.bench.metrics import BenchResult

LLAMA_SERVER = "llama-server"
OURS = "ours llamacpp"
OURS_DEFAULT = "ours default path"
OPENVINO = "openvino"  # + " int8" / " int4"
SWEEP, MULTI_TURN, MANY_CHATS = "sweep", "multi-turn", "many-chats"
WORKLOADS = (SWEEP, MULTI_TURN, MANY_CHATS)  # in the order rows and ratios are printed


@dataclass
class Row:
    """One contender at one concurrency on one file and workload, or why it has no numbers."""

    group: str  # "<shape> <qtype>", the file every contender of the group serves
    contender: str
    concurrency: int
    workload: str = SWEEP
    result: BenchResult | None = None
    status: str = "ok"
    repeat: int = 0  # which pass over the plan (--repeats): every contender of a group runs once per pass
    engine: dict[str, float] | None = None  # ours: peers.engine_time.EngineTime over the row

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["result"] = self.result.to_dict() if self.result else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Row:
        result = BenchResult.from_dict(data["result"]) if data.get("result") else None
        return cls(data["group"], data["contender"], int(data["concurrency"]), data.get("workload", SWEEP),
                   result, data.get("status", "ok"), int(data.get("repeat", 0)), data.get("engine"))  # fmt: skip


@dataclass
class Ratio:
    """ours / theirs on one metric; a target makes it PASS/FAIL, none makes it INFO."""

    group: str
    workload: str
    concurrency: int
    ours: str
    theirs: str
    metric: str  # "output tok/s" or "TTFT p50"
    ours_value: float
    theirs_value: float
    target: float | None = None
    higher_is_better: bool = True
    # With repeats: the ratio of each pass (ours and theirs of the same pass); the verdict is on their median, and
    # ours_value / theirs_value are the medians of each side's values.
    per_repeat: list[float] = field(default_factory=list)

    @property
    def value(self) -> float:
        if self.per_repeat:
            return _median(self.per_repeat)
        ok = self.theirs_value > 0 and math.isfinite(self.ours_value) and math.isfinite(self.theirs_value)
        return self.ours_value / self.theirs_value if ok else math.nan

    @property
    def verdict(self) -> str:
        if math.isnan(self.value):
            return "SKIP"
        if self.target is None:
            return "INFO"
        met = self.value >= self.target if self.higher_is_better else self.value <= self.target
        return "PASS" if met else "FAIL"

    def line(self) -> str:
        sign = ">=" if self.higher_is_better else "<="
        goal = f" (target {sign} {self.target})" if self.target is not None else ""
        where = f"{self.group} {self.workload} c={self.concurrency}"
        value = "-" if math.isnan(self.value) else f"{self.value:.2f}x"
        if self.per_repeat and not math.isnan(self.value):
            spread = ", ".join(f"{v:.2f}" for v in self.per_repeat)
            value = f"{value} (median of {len(self.per_repeat)} passes: {spread})"
        return (f"{self.verdict:<4}  {where}: {self.ours} / {self.theirs} {self.metric} = {value}{goal}; "
                f"{_fmt(self.ours_value)} vs {_fmt(self.theirs_value)}")  # fmt: skip


@dataclass
class Run:
    """A whole run: what was asked, where, the rows; saved as one JSON file."""

    machine: str
    started: str
    settings: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def save(self, path: Path) -> None:
        payload = {"machine": self.machine, "started": self.started, "settings": self.settings,
                   "notes": self.notes, "rows": [r.to_dict() for r in self.rows],
                   "ratios": [{**asdict(r), "value": r.value, "verdict": r.verdict}
                              for r in ratios(self.rows)]}  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=1, default=str))

    @classmethod
    def load(cls, path: Path) -> Run:
        data = json.loads(path.read_text())
        return cls(data["machine"], data["started"], data.get("settings", {}),
                   [Row.from_dict(r) for r in data["rows"]], data.get("notes", []))  # fmt: skip


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _completed(rows: list[Row], group: str, workload: str, contender: str, c: int) -> BenchResult | None:
    for row in rows:
        if (row.group, row.workload, row.contender, row.concurrency) == (group, workload, contender, c):
            return row.result if row.result is not None and row.result.completed else None
    return None


def _pair(rows: list[Row], group: str, workload: str, c: int, ours: str, theirs: str, metric: str,
          target: float | None, higher_is_better: bool = True) -> Ratio | None:  # fmt: skip
    """The ratio of two contenders' rows, NaN where a row failed; None where either contender never ran here."""
    present = {(r.contender) for r in rows if (r.group, r.workload, r.concurrency) == (group, workload, c)}
    if ours not in present or theirs not in present:
        return None
    a, b = (_completed(rows, group, workload, name, c) for name in (ours, theirs))

    def pick(result: BenchResult | None) -> float:
        if result is None:
            return math.nan
        return result.output_throughput if metric == "output tok/s" else result.ttft_ms.p50

    return Ratio(group, workload, c, ours, theirs, metric, pick(a), pick(b), target, higher_is_better)


def ratios(rows: list[Row]) -> list[Ratio]:
    """The ratios of `pass_ratios`, per pass when the run has one; with several passes (--repeats), one Ratio per
    pair whose verdict is on the median of the passes' ratios (each pass pairs ours and theirs of that pass)."""
    passes = sorted({r.repeat for r in rows})
    if len(passes) <= 1:
        return pass_ratios(rows)
    merged: dict[tuple[str, str, int, str, str, str], list[Ratio]] = {}
    for repeat in passes:
        for ratio in pass_ratios([r for r in rows if r.repeat == repeat]):
            key = (ratio.group, ratio.workload, ratio.concurrency, ratio.ours, ratio.theirs, ratio.metric)
            merged.setdefault(key, []).append(ratio)
    out = []
    for each in merged.values():
        first = each[0]
        out.append(Ratio(first.group, first.workload, first.concurrency, first.ours, first.theirs, first.metric,
                         _median([r.ours_value for r in each]), _median([r.theirs_value for r in each]),
                         first.target, first.higher_is_better, [r.value for r in each]))  # fmt: skip
    return out


def _median(values: list[float]) -> float:
    return statistics.median(values) if values and all(math.isfinite(v) for v in values) else math.nan


def pass_ratios(rows: list[Row]) -> list[Ratio]:
    """Every ratio the rows of one pass allow, with the targets of the side-by-side benchmark:
    ours >= 1.0x llama-server at every concurrency on every file; >= 1.3x on the multi-turn workload (and on many
    chats, more conversations than sequences: prefix reuse beyond the running sequences); our Q8_0 file
    >= 1.0x OpenVINO int8 at c=8; the default path on a safetensors checkpoint >= 0.95x llama-server on the GGUF
    made from it. Other pairs (OpenVINO at other concurrencies, int4, TTFT) are INFO."""
    out: list[Ratio] = []
    keys = sorted({(r.group, r.workload, r.concurrency) for r in rows},
                  key=lambda k: ([r.group for r in rows].index(k[0]), WORKLOADS.index(k[1]), k[2]))  # fmt: skip
    openvinos = sorted({r.contender for r in rows if r.contender.startswith(OPENVINO)})
    for group, workload, c in keys:
        if workload in (MULTI_TURN, MANY_CHATS):
            candidates = [_pair(rows, group, workload, c, OURS, LLAMA_SERVER, "output tok/s", 1.3),
                          _pair(rows, group, workload, c, OURS, LLAMA_SERVER, "TTFT p50", None, False)]  # fmt: skip
        else:
            candidates = [
                _pair(rows, group, workload, c, OURS, LLAMA_SERVER, "output tok/s", 1.0),
                _pair(rows, group, workload, c, OURS_DEFAULT, LLAMA_SERVER, "output tok/s", 0.95),
            ]
            for name in openvinos:
                target = 1.0 if name.endswith("int8") and c == 8 else None
                candidates.append(_pair(rows, group, workload, c, OURS, name, "output tok/s", target))
        out += [ratio for ratio in candidates if ratio is not None]
    return out


def table(rows: list[Row]) -> str:
    """One line per row: throughput and latency percentiles (ms)."""
    header = (f"{'file':<11} {'workload':<10} {'contender':<21} {'c':>3} {'pass':>4} {'ok/fail':>7} {'out tok/s':>9} "
              f"{'TTFT p50':>8} {'TTFT p90':>8} {'TPOT p50':>8} {'TPOT p90':>8}")  # fmt: skip
    lines = [header, "-" * len(header)]
    for row in rows:
        start = f"{row.group:<11} {row.workload:<10} {row.contender:<21} {row.concurrency:>3} {row.repeat:>4}"
        r = row.result
        if r is None:
            lines.append(f"{start} {row.status}")
            continue
        lines.append(f"{start} {f'{r.completed}/{r.failed}':>7} {_fmt(r.output_throughput):>9} "
                     f"{_fmt(r.ttft_ms.p50, 0):>8} {_fmt(r.ttft_ms.p90, 0):>8} {_fmt(r.tpot_ms.p50, 1):>8} "
                     f"{_fmt(r.tpot_ms.p90, 1):>8}")  # fmt: skip
    return "\n".join(lines)


def median_rows(rows: list[Row]) -> list[Row]:
    """One row per (file, workload, contender, c), in first-seen order: with repeats, the completed pass whose
    throughput is the median (the lower middle one for an even count), so a plot draws one line per contender."""
    cells: dict[tuple[str, str, str, int], list[Row]] = {}
    for row in rows:
        cells.setdefault((row.group, row.workload, row.contender, row.concurrency), []).append(row)
    out = []
    for cell in cells.values():
        done = sorted((r for r in cell if r.result is not None and r.result.completed),
                      key=lambda r: r.result.output_throughput if r.result else 0.0)  # fmt: skip
        out.append(done[(len(done) - 1) // 2] if done else cell[0])
    return out


def plot(run: Run, path: Path) -> Path:
    """One PNG: a row of panels (tokens/s, TTFT, TPOT vs concurrency, one line per contender) per file and workload,
    the machine and the run's shapes and quants in the title."""
    from qwen3_api.bench.plot import plot_groups

    groups: dict[str, dict[str, list[BenchResult]]] = {}
    for row in median_rows(run.rows):
        if row.result is not None and row.result.completed:
            label = row.group if row.workload == SWEEP else f"{row.group} {row.workload}"
            groups.setdefault(label, {}).setdefault(row.contender, []).append(row.result)
    if not groups:
        raise ValueError("no completed rows to plot")
    s = run.settings
    model = f"Qwen3 shapes, random weights: {', '.join(groups)}"
    subtitle = (f"{s.get('prompt_tokens', '?')}-token prompts, end tokens ignored, greedy; "
                f"run started {run.started}")  # fmt: skip
    return plot_groups(groups, path, model, subtitle, upper="p90", machine=run.machine)
