"""OpenVINO GenAI as a peer: its own cached virtual environment and the export of our checkpoint to OpenVINO IR.

OpenVINO GenAI needs optimum-intel (and with it a transformers older than ours) to export a model, so it lives in
a venv of its own under the user cache, built once: CPU torch first, then the OpenVINO packages under a constraint
file that keeps that torch and a transformers optimum-intel 2.2 accepts, then without torchvision (PyPI's build is
a CUDA one that breaks the export beside CPU torch). A stamp file marks a finished install, so a half-built venv is
never reused. Exports are cached per checkpoint directory and weight format and appear by atomic rename.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qwen3_api.bench.metrics import BenchResult

OPENVINO_VERSION = "2026.4"
TORCH_VERSION = "2.13.0"
PACKAGES = (
    f"openvino-genai=={OPENVINO_VERSION}.*",
    f"openvino=={OPENVINO_VERSION}.*",
    f"openvino-tokenizers=={OPENVINO_VERSION}.*",
    "optimum-intel[openvino]==2.2.0",
)
CONSTRAINTS = (f"torch=={TORCH_VERSION}", "transformers<5.6")
WEIGHT_FORMATS = ("int8", "int4", "fp32")
DRIVER = Path(__file__).with_name("openvino_driver.py")


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qwen3-api"


def default_venv_dir() -> Path:
    return cache_root() / f"openvino-venv-{OPENVINO_VERSION}"


def venv_python(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "python"


def _stamp(venv_dir: Path) -> Path:
    return venv_dir / ".qwen3-api-complete"


def install_commands(python: Path, constraint_file: Path) -> list[list[str]]:
    """The pip steps, in order: torch alone first, the OpenVINO stack under the constraints, torchvision out."""
    pip = [str(python), "-m", "pip"]
    return [
        [*pip, "install", f"torch=={TORCH_VERSION}"],
        [*pip, "install", "-c", str(constraint_file), *PACKAGES],
        [*pip, "uninstall", "-y", "torchvision"],
    ]


def ensure_venv(venv_dir: Path | None = None, log: Path | None = None) -> Path:
    """The venv's python, installing the venv first unless a finished one is there (~3-5 min, ~2 GB)."""
    venv_dir = venv_dir or default_venv_dir()
    python = venv_python(venv_dir)
    if _stamp(venv_dir).is_file() and python.is_file():
        return python
    if venv_dir.exists():
        shutil.rmtree(venv_dir)  # an unfinished install: start over
    print(f"installing OpenVINO GenAI {OPENVINO_VERSION} into {venv_dir} (a few minutes, once)", flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    constraint_file = venv_dir / "constraints.txt"
    constraint_file.write_text("\n".join(CONSTRAINTS) + "\n")
    out = log.open("ab") if log else None
    try:
        for command in install_commands(python, constraint_file):
            subprocess.run(command, check=True, stdout=out, stderr=subprocess.STDOUT if out else None)
    finally:
        if out:
            out.close()
    _stamp(venv_dir).write_text(" ".join(PACKAGES) + "\n")
    return python


def export_dir(model_dir: Path, weight_format: str) -> Path:
    """Where the OpenVINO IR of `model_dir` in `weight_format` is cached."""
    return cache_root() / "openvino-models" / f"{model_dir.name}-{weight_format}"


def export_command(python: Path, model_dir: Path, weight_format: str, out_dir: Path) -> list[str]:
    """optimum-cli's offline export of a local HF directory, KV cache included (text-generation-with-past)."""
    if weight_format not in WEIGHT_FORMATS:
        raise ValueError(f"weight format must be one of {', '.join(WEIGHT_FORMATS)}, got {weight_format!r}")
    cli = python.with_name("optimum-cli")
    return [str(cli), "export", "openvino", "--model", str(model_dir), "--task", "text-generation-with-past",
            "--weight-format", weight_format, str(out_dir)]  # fmt: skip


def ensure_export(python: Path, model_dir: Path, weight_format: str, log: Path | None = None) -> Path:
    """The exported model directory, exporting it first unless it is cached."""
    target = export_dir(model_dir, weight_format)
    if (target / "openvino_model.xml").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"exporting {model_dir.name} to OpenVINO {weight_format} (once) ...", flush=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", suffix=".partial", dir=target.parent))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = log.open("ab") if log else None
    try:
        subprocess.run(export_command(python, model_dir, weight_format, staging), check=True, env=env,
                       stdout=out, stderr=subprocess.STDOUT if out else None)  # fmt: skip
        if not (staging / "openvino_model.xml").is_file():
            raise RuntimeError(f"optimum-cli wrote no openvino_model.xml into {staging}")
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if out:
            out.close()
    return target



def driver_spec(export: Path, threads: int, runs: list[dict[str, Any]], max_num_seqs: int,
                cache_gb: int = 1, max_num_batched_tokens: int = 512) -> dict[str, Any]:  # fmt: skip
    """What `openvino_driver.py` reads: the exported model, its scheduler's sizes and the runs (token ids)."""
    return {"model_dir": str(export), "threads": threads, "cache_gb": cache_gb, "max_num_seqs": max_num_seqs,
            "max_num_batched_tokens": max_num_batched_tokens, "runs": runs}  # fmt: skip


def results_from_driver(payload: dict[str, Any], label: str, output_tokens: int,
                        prompt_tokens: int) -> dict[int, BenchResult]:  # fmt: skip
    """The driver's raw per-request timings, summarized exactly as `qwen3-api bench` summarizes a server's."""
    from qwen3_api.bench.metrics import RequestOutput, summarize

    results = {}
    for run in payload["runs"]:
        outputs = [
            RequestOutput(success=True, prompt_tokens=r["prompt_tokens"], output_tokens=r["output_tokens"],
                          output_tokens_source="generated ids", ttft=r["ttft"], e2e=r["e2e"], itl=list(r["itl"]),
                          streamed=True, text_events=len(r["itl"]) + (1 if r["output_tokens"] else 0))
            for r in run["requests"]
        ]  # fmt: skip
        notes = [f"in-process OpenVINO GenAI {payload.get('openvino_genai', '?')} ContinuousBatchingPipeline "
                 "(no HTTP): TTFT from add_request to the first token readable after a step"]  # fmt: skip
        results[int(run["concurrency"])] = summarize(
            outputs, float(run["duration_s"]), api="openvino-genai in-process", url=label, model=label,
            concurrency=int(run["concurrency"]), prompt_tokens_target=prompt_tokens,
            output_tokens_target=output_tokens, notes=notes,
        )  # fmt: skip
    return results


def run_driver(python: Path, spec: dict[str, Any], log: Path, timeout_s: float) -> dict[str, Any]:
    """Run the driver in the OpenVINO venv on `spec`; its output JSON."""
    with tempfile.TemporaryDirectory(prefix="openvino-driver.") as work:
        spec_path, out_path = Path(work) / "spec.json", Path(work) / "out.json"
        spec_path.write_text(json.dumps(spec))
        with log.open("ab") as out:
            command = [str(python), str(DRIVER), str(spec_path), str(out_path)]
            subprocess.run(command, check=True, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
        return json.loads(out_path.read_text())  # type: ignore[no-any-return]


if __name__ == "__main__":  # install ahead of a benchmark run: python benchmarks/peers/openvino_env.py
    print(ensure_venv(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
