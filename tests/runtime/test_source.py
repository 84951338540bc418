"""Resolving --model: local directories, test models (directories and GGUF files), aliases, and a clear failure
without the hub."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qwen3_api.demo_models.checkpoints import parse_test_model_spec
from qwen3_api.demo_models.gguf import cached_test_gguf
from qwen3_api.errors import ModelLoadError
from qwen3_api.runtime.source import canonical_model_name, resolve_gguf_model, resolve_model
from tests.conftest import REPO_ROOT, free_port


def test_local_directory_is_used_as_is(tiny_model_dir: Path) -> None:
    assert resolve_model(str(tiny_model_dir)) == tiny_model_dir


def test_incomplete_directory_names_what_is_missing(tiny_model_dir: Path, tmp_path: Path) -> None:
    shutil.copy(tiny_model_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelLoadError, match=r"safetensors.*tokenizer.json"):
        resolve_model(str(tmp_path))


def test_test_model_spec(tiny_model_dir: Path) -> None:
    assert resolve_model("test:tiny") == tiny_model_dir
    assert parse_test_model_spec("test:0.6b:dtype=bfloat16,seed=3,num_layers=4") == {
        "shape": "0.6b", "dtype": "bfloat16", "seed": 3, "num_layers": 4,
    }  # fmt: skip
    with pytest.raises(ModelLoadError):
        resolve_model("test:huge")


def test_test_spec_gives_the_cached_gguf(tiny_model_dir: Path) -> None:
    tiny_q8 = cached_test_gguf("Q8_0", shape="tiny")
    assert resolve_gguf_model("test:tiny:gguf=Q8_0") == tiny_q8
    assert resolve_gguf_model("test:tiny:gguf=q8_0") == tiny_q8
    # The same spec given to resolve_model names the directory the GGUF was made from.
    assert resolve_model("test:tiny:gguf=Q8_0") == tiny_model_dir
    with pytest.raises(ModelLoadError, match=r"names no GGUF type.*test:tiny:gguf=Q8_0"):
        resolve_gguf_model("test:tiny")
    with pytest.raises(ModelLoadError, match="unknown GGUF type"):
        resolve_gguf_model("test:tiny:gguf=Q2_K")


def test_original_docs_id_is_an_alias_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert canonical_model_name("Qwen/Qwen3-4B-Instruct") == "Qwen/Qwen3-4B-Instruct-2507"
    assert "does not exist" in caplog.text


def test_unreachable_hub_fails_fast_with_a_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # stands for "no network", as on machines without the hub
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match=r"not in the local HF cache.*--model /path/to/model.*test:tiny"):
        resolve_model("someone/not-cached-model")
    assert time.monotonic() - started < 30


def test_serve_exits_with_one_clear_line_when_the_model_cannot_be_had(tmp_path: Path) -> None:
    env = {"HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "qwen3_api.cli", "serve", "--model", "someone/not-cached", "--port", str(free_port())],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "not in the local HF cache" in result.stderr
    assert "Traceback" not in result.stderr
