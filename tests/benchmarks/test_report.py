"""The ratio table of cpu_peers.py, and a saved run read back, printed and re-plotted without measuring."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cpu_peers
import numpy as np
import pytest
from matplotlib import image
from peers import report
from peers.report import LLAMA_SERVER, MANY_CHATS, MULTI_TURN, OURS, OURS_DEFAULT, Row, Run

from tests.benchmarks.helpers import result


def sweep_rows() -> list[Row]:
    return [
        Row("0.6b Q8_0", LLAMA_SERVER, 1, result=result(20.0)),
        Row("0.6b Q8_0", OURS, 1, result=result(22.0)),
        Row("0.6b Q8_0", OURS_DEFAULT, 1, result=result(18.0)),
        Row("0.6b Q8_0", LLAMA_SERVER, 8, result=result(40.0, 8)),
        Row("0.6b Q8_0", OURS, 8, result=result(30.0, 8)),
        Row("0.6b Q8_0", "openvino int8", 8, result=result(25.0, 8)),
        Row("0.6b Q8_0", OURS, 4, result=result(30.0, 4)),
        Row("0.6b Q8_0", LLAMA_SERVER, 4, status="failed to start: exited with code 1"),
        Row("0.6b Q8_0", LLAMA_SERVER, 4, MULTI_TURN, result=result(10.0, 4, ttft_s=0.9)),
        Row("0.6b Q8_0", OURS, 4, MULTI_TURN, result=result(14.0, 4, ttft_s=0.3)),
        Row("0.6b Q8_0", LLAMA_SERVER, 12, MANY_CHATS, result=result(10.0, 12)),
        Row("0.6b Q8_0", OURS, 12, MANY_CHATS, result=result(12.0, 12)),
    ]


def by_key(ratios: list[report.Ratio]) -> dict[tuple[str, int, str, str, str], report.Ratio]:
    return {(r.workload, r.concurrency, r.ours, r.theirs, r.metric): r for r in ratios}


def test_ratios_carry_the_targets_and_verdicts() -> None:
    found = by_key(report.ratios(sweep_rows()))
    ours_c1 = found[("sweep", 1, OURS, LLAMA_SERVER, "output tok/s")]
    assert ours_c1.value == pytest.approx(1.1) and ours_c1.target == 1.0 and ours_c1.verdict == "PASS"
    default_c1 = found[("sweep", 1, OURS_DEFAULT, LLAMA_SERVER, "output tok/s")]
    assert default_c1.value == pytest.approx(0.9) and default_c1.target == 0.95 and default_c1.verdict == "FAIL"
    ours_c8 = found[("sweep", 8, OURS, LLAMA_SERVER, "output tok/s")]
    assert ours_c8.verdict == "FAIL" and ours_c8.value == pytest.approx(0.75)
    openvino_c8 = found[("sweep", 8, OURS, "openvino int8", "output tok/s")]
    assert openvino_c8.target == 1.0 and openvino_c8.verdict == "PASS" and openvino_c8.value == pytest.approx(1.2)
    chat = found[(MULTI_TURN, 4, OURS, LLAMA_SERVER, "output tok/s")]
    assert chat.target == 1.3 and chat.verdict == "PASS" and chat.value == pytest.approx(1.4)
    ttft = found[(MULTI_TURN, 4, OURS, LLAMA_SERVER, "TTFT p50")]
    assert ttft.target is None and ttft.verdict == "INFO" and ttft.value == pytest.approx(1 / 3)
    many = found[(MANY_CHATS, 12, OURS, LLAMA_SERVER, "output tok/s")]
    assert many.target == 1.3 and many.verdict == "FAIL" and many.value == pytest.approx(1.2)


def test_a_failed_row_is_a_skip_and_an_absent_contender_no_ratio() -> None:
    found = by_key(report.ratios(sweep_rows()))
    failed = found[("sweep", 4, OURS, LLAMA_SERVER, "output tok/s")]
    assert failed.verdict == "SKIP" and math.isnan(failed.value) and "-" in failed.line()
    assert ("sweep", 4, OURS_DEFAULT, LLAMA_SERVER, "output tok/s") not in found  # the default path ran at c=1 only
    assert ("sweep", 1, OURS, "openvino int8", "output tok/s") not in found


def test_openvino_only_counts_at_c8_with_int8() -> None:
    rows = [Row("g", OURS, 1, result=result(10.0)), Row("g", "openvino int8", 1, result=result(5.0)),
            Row("g", OURS, 8, result=result(10.0, 8)), Row("g", "openvino int4", 8, result=result(20.0, 8))]  # fmt: skip
    found = by_key(report.ratios(rows))
    assert found[("sweep", 1, OURS, "openvino int8", "output tok/s")].verdict == "INFO"
    assert found[("sweep", 8, OURS, "openvino int4", "output tok/s")].verdict == "INFO"


def test_a_saved_run_loads_back_equal(tmp_path: Path) -> None:
    run = Run("Some CPU, 2 cores", "2026-12-01 12:00 UTC", {"prompt_tokens": 64}, sweep_rows(), ["a note"])
    path = tmp_path / "run.json"
    run.save(path)
    loaded = Run.load(path)
    assert loaded.machine == run.machine and loaded.notes == run.notes
    assert [r.to_dict() for r in loaded.rows] == [r.to_dict() for r in run.rows]
    saved = json.loads(path.read_text())
    assert {r["verdict"] for r in saved["ratios"]} == {"PASS", "FAIL", "SKIP", "INFO"}
    assert report.table(loaded.rows) == report.table(run.rows)


def test_replot_prints_the_table_and_ratios_and_draws_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cpu_peers-x.json"
    Run("Recorded CPU, 2 cores", "2026-12-01 12:00 UTC", {"prompt_tokens": 64}, sweep_rows()).save(path)
    assert cpu_peers.main(["--replot", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Recorded CPU, 2 cores" in out  # the machine of the run, not of the re-plot
    assert "PASS  0.6b Q8_0 sweep c=1: ours llamacpp / llama-server output tok/s = 1.10x (target >= 1.0)" in out
    assert "failed to start: exited with code 1" in out
    pixels = image.imread(tmp_path / "cpu_peers-x.png")
    assert pixels.shape[0] > 800  # two rows of panels: the sweep and the multi-turn workload
    assert np.std(pixels[..., :3]) > 0.05


def test_a_run_with_nothing_completed_has_no_plot(tmp_path: Path) -> None:
    run = Run("cpu", "now", {}, [Row("g", OURS, 1, status="failed: boom")])
    with pytest.raises(ValueError, match="no completed rows"):
        report.plot(run, tmp_path / "x.png")


def repeated_rows() -> list[Row]:
    """Three passes over one file: ours 20/30/22 tok/s against theirs 25/20/20 at c=1 (ratios 0.8, 1.5, 1.1)."""
    rows = []
    for repeat, (ours, theirs) in enumerate([(20.0, 25.0), (30.0, 20.0), (22.0, 20.0)]):
        rows += [Row("0.6b Q8_0", OURS, 1, result=result(ours), repeat=repeat),
                 Row("0.6b Q8_0", LLAMA_SERVER, 1, result=result(theirs), repeat=repeat)]  # fmt: skip
    return rows


def test_repeats_give_one_ratio_on_the_median_of_the_passes() -> None:
    ratios = report.ratios(repeated_rows())
    assert len(ratios) == 1
    ratio = ratios[0]
    assert ratio.per_repeat == pytest.approx([0.8, 1.5, 1.1])
    # the median of the per-pass ratios, not their mean (1.13); each side's value is its own median
    assert ratio.value == pytest.approx(1.1) and ratio.verdict == "PASS"
    assert (ratio.ours_value, ratio.theirs_value) == (22.0, 20.0)
    assert "1.10x (median of 3 passes: 0.80, 1.50, 1.10)" in ratio.line()


def test_repeats_pair_ours_and_theirs_of_the_same_pass() -> None:
    # Ratios of the medians would be 30 / 25 = 1.2; each pass's own pair gives 0.8, 1.2, 1.0 -> median 1.0.
    rows = []
    for repeat, (ours, theirs) in enumerate([(20.0, 25.0), (30.0, 25.0), (40.0, 40.0)]):
        rows += [Row("g", OURS, 1, result=result(ours), repeat=repeat),
                 Row("g", LLAMA_SERVER, 1, result=result(theirs), repeat=repeat)]  # fmt: skip
    (ratio,) = report.ratios(rows)
    assert ratio.value == pytest.approx(1.0) and ratio.per_repeat == pytest.approx([0.8, 1.2, 1.0])


def test_a_failed_pass_makes_the_repeated_ratio_a_skip() -> None:
    rows = repeated_rows()
    rows[2] = Row("0.6b Q8_0", OURS, 1, status="failed: boom", repeat=1)
    (ratio,) = report.ratios(rows)
    assert ratio.verdict == "SKIP" and math.isnan(ratio.value)


def test_repeats_survive_a_save_and_the_plot_takes_the_median_pass(tmp_path: Path) -> None:
    run = Run("cpu", "now", {"repeats": 3}, repeated_rows())
    run.save(tmp_path / "run.json")
    loaded = Run.load(tmp_path / "run.json")
    assert [r.repeat for r in loaded.rows] == [0, 0, 1, 1, 2, 2]
    assert "per_repeat" in json.loads((tmp_path / "run.json").read_text())["ratios"][0]
    picked = {r.contender: r.result.output_throughput for r in report.median_rows(loaded.rows) if r.result}
    assert picked == {OURS: 22.0, LLAMA_SERVER: 20.0}
    assert report.plot(loaded, tmp_path / "run.png").is_file()
