"""OpenVINO GenAI as a peer: the install recipe, the export command, and its timings summarized like a server's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from peers import openvino_env

from tests.conftest import REPO_ROOT


def test_torch_goes_in_first_then_the_stack_under_the_constraints_then_torchvision_out(tmp_path: Path) -> None:
    python, constraints = tmp_path / "bin" / "python", tmp_path / "c.txt"
    torch, stack, uninstall = openvino_env.install_commands(python, constraints)
    assert torch[:3] == [str(python), "-m", "pip"] and torch[3:] == ["install", "torch==2.13.0"]
    assert stack[3:6] == ["install", "-c", str(constraints)]
    assert "openvino-genai==2026.4.*" in stack and "optimum-intel[openvino]==2.2.0" in stack
    assert uninstall[3:] == ["uninstall", "-y", "torchvision"]
    assert "transformers<5.6" in openvino_env.CONSTRAINTS and "torch==2.13.0" in openvino_env.CONSTRAINTS


def test_export_command_and_an_unknown_weight_format() -> None:
    command = openvino_env.export_command(Path("/v/bin/python"), Path("/m/x"), "int8", Path("/out"))
    assert command[0] == "/v/bin/optimum-cli" and command[-1] == "/out"
    assert command[command.index("--weight-format") + 1] == "int8"
    assert command[command.index("--task") + 1] == "text-generation-with-past"
    with pytest.raises(ValueError, match="int3"):
        openvino_env.export_command(Path("/v/bin/python"), Path("/m/x"), "int3", Path("/out"))


def test_driver_timings_are_summarized_as_a_server_run() -> None:
    request = {"ttft": 0.2, "e2e": 0.2 + 3 * 0.1, "itl": [0.1, 0.1, 0.1], "output_tokens": 4, "prompt_tokens": 6}
    payload = {"openvino_genai": "2026.4.1", "runs": [{"concurrency": 2, "duration_s": 0.8,
                                                        "requests": [request, request]}]}  # fmt: skip
    (c, result), = openvino_env.results_from_driver(payload, "openvino int8", 4, 6).items()
    assert c == 2 and result.completed == 2 and result.total_output_tokens == 8
    assert result.output_throughput == pytest.approx(10.0)
    assert result.ttft_ms.p50 == pytest.approx(200.0) and result.tpot_ms.mean == pytest.approx(100.0)
    assert result.itl_ms.count == 6 and "OpenVINO GenAI 2026.4.1" in result.notes[0]


def test_the_driver_runs_continuous_batching_in_the_venv(tmp_path: Path) -> None:
    """Only where the venv and the tiny model's int8 export are cached (cpu_peers.py makes both)."""
    python = openvino_env.venv_python(openvino_env.default_venv_dir())
    from qwen3_api.demo_models.checkpoints import cached_test_model

    export = openvino_env.export_dir(cached_test_model("tiny"), "int8")
    if not python.is_file() or not (export / "openvino_model.xml").is_file():
        pytest.skip("no cached OpenVINO venv or tiny int8 export")
    runs = [{"concurrency": 2, "output_tokens": 5, "warmup": [1, 2, 3], "prompts": [[10, 11, 12], [20, 21], [30]]}]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(openvino_env.driver_spec(export, 2, runs, max_num_seqs=2)))
    out = tmp_path / "out.json"
    subprocess.run([str(python), str(openvino_env.DRIVER), str(spec), str(out)], check=True, timeout=600,
                   cwd=REPO_ROOT, capture_output=True)  # fmt: skip
    (run,) = json.loads(out.read_text())["runs"]
    assert [r["output_tokens"] for r in run["requests"]] == [5, 5, 5]  # end tokens ignored: exactly 5 each
    assert [r["prompt_tokens"] for r in run["requests"]] == [3, 2, 1]
    assert all(len(r["itl"]) == 4 and 0 < r["ttft"] < r["e2e"] for r in run["requests"])
