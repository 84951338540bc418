"""Resolving GGUF model names: local files, HF repo + quant (cache first), and clear failures (demo `test:` specs:
tests/runtime/test_source.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from qwen3_api.demo_models.gguf import cached_test_gguf
from qwen3_api.errors import ModelLoadError
from qwen3_api.models import gguf as gguf_source
from qwen3_api.models.gguf import is_gguf_spec, quant_of, resolve_gguf

REPO = "Qwen/Qwen3-4B-GGUF"


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty HF cache and no hub (huggingface_hub reads both settings at import, so patch its constants too)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def cache_files(cache: Path, repo_id: str, *names: str) -> Path:
    """Lay out `names` in the HF cache as a download of `repo_id` would."""
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    for name in names:
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(b"GGUF")
    return snapshot


@pytest.fixture(scope="module")
def tiny_q8() -> Path:
    return cached_test_gguf("Q8_0", shape="tiny")


def test_names_that_are_gguf_specs() -> None:
    for name in ("/models/qwen3.gguf", "qwen3-Q8_0.gguf", f"{REPO}:Q4_K_M", f"{REPO}:Qwen3-4B-Q4_K_M.gguf", REPO,
                 "test:tiny:gguf=Q8_0", "test:0.6b:seed=1,gguf=F16"):  # fmt: skip
        assert is_gguf_spec(name), name
    for name in ("Qwen/Qwen3-4B", "/models/qwen3", "test:tiny", "test:tiny:seed=1", "test:tiny:ggufx=1"):
        assert not is_gguf_spec(name), name


def test_quant_of_file_names() -> None:
    assert quant_of("Qwen3-4B-Q4_K_M.gguf") == "Q4_K_M"
    assert quant_of("Qwen_Qwen3-4B-IQ2_XXS.gguf") == "IQ2_XXS"
    assert quant_of("Q8_0/Qwen3-32B-Q8_0-00001-of-00002.gguf") == "Q8_0"
    assert quant_of("Qwen3-4B-UD-Q4_K_XL.gguf") == "UD-Q4_K_XL"
    assert quant_of("qwen3-4b-bf16.gguf") == "bf16"


def test_local_file(tiny_q8: Path, tmp_path: Path) -> None:
    assert resolve_gguf(str(tiny_q8)) == tiny_q8
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_gguf(str(tmp_path / "missing.gguf"))
    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        resolve_gguf(str(not_gguf))
    with pytest.raises(ModelLoadError, match="not a file"):
        resolve_gguf(str(tmp_path))


def test_unreachable_hub_fails_fast_with_a_hint(offline_hub: Path) -> None:
    started = time.monotonic()
    with pytest.raises(
        ModelLoadError, match=r"not in the local HF cache and the hub cannot be reached.*test:tiny:gguf"
    ):
        resolve_gguf(f"{REPO}:Q4_K_M")
    with pytest.raises(ModelLoadError, match=rf"name a quant of {REPO}"):
        resolve_gguf(REPO)
    assert time.monotonic() - started < 30


def test_cached_quant_is_used_without_the_hub(offline_hub: Path) -> None:
    snapshot = cache_files(offline_hub, REPO, "Qwen3-4B-Q4_K_M.gguf", "Qwen3-4B-Q8_0.gguf", "mmproj-F16.gguf")
    assert resolve_gguf(f"{REPO}:q4_k_m") == snapshot / "Qwen3-4B-Q4_K_M.gguf"
    assert resolve_gguf(f"{REPO}:Qwen3-4B-Q8_0.gguf") == snapshot / "Qwen3-4B-Q8_0.gguf"
    with pytest.raises(ModelLoadError, match=r"cached here: Q4_K_M, Q8_0\) and the hub cannot be reached"):
        resolve_gguf(f"{REPO}:F16")  # mmproj files are not model quants


def test_a_split_gguf_counts_only_when_every_part_is_cached(offline_hub: Path) -> None:
    cache_files(offline_hub, REPO, "Q8_0/Qwen3-4B-Q8_0-00001-of-00002.gguf")
    with pytest.raises(ModelLoadError, match="hub cannot be reached"):
        resolve_gguf(f"{REPO}:Q8_0")


def test_missing_quant_lists_the_available_ones(offline_hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub_files = ["README.md", "Qwen3-4B-Q4_K_M.gguf", "Qwen3-4B-Q5_K_M.gguf", "Qwen3-4B-Q8_0.gguf", "params"]
    monkeypatch.setattr(gguf_source, "_hub_repo_files", lambda repo_id: hub_files)
    with pytest.raises(ModelLoadError, match=r"has no GGUF file for 'Q3_K_S'; available: Q4_K_M, Q5_K_M, Q8_0"):
        resolve_gguf(f"{REPO}:Q3_K_S")
    with pytest.raises(ModelLoadError, match=r"has no GGUF file for 'other.gguf'"):
        resolve_gguf(f"{REPO}:other.gguf")
    with pytest.raises(ModelLoadError, match=r"name a quant.*available: Q4_K_M, Q5_K_M, Q8_0"):
        resolve_gguf(REPO)
    hub_files.append("Qwen3-4B-Instruct-Q8_0.gguf")
    with pytest.raises(ModelLoadError, match="matches several files"):
        resolve_gguf(f"{REPO}:Q8_0")


def test_a_name_that_is_no_gguf_model() -> None:
    with pytest.raises(ModelLoadError, match="does not name a GGUF model"):
        resolve_gguf("not-a-repo-id")
