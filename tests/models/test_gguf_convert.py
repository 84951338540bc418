"""Safetensors checkpoints converted once to a GGUF quant by llama.cpp's quantizer, cached by identity and quant,
written atomically; and the `--quantize` choices that pick this path."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from qwen3_api.config import Settings
from qwen3_api.demo_models.gguf import cached_test_gguf
from qwen3_api.errors import ModelLoadError
from qwen3_api.models.gguf_convert import convert_checkpoint
from qwen3_api.runtime.loader import choose_runtime

gguf = pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")


@pytest.fixture
def checkpoint(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny checkpoint (its files' mtimes are part of the cache key)."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "tiny-checkpoint"))


class Counter:
    def __init__(self, fail_at: int | None = None) -> None:
        self.calls, self.fail_at = 0, fail_at

    def __call__(self, done: int, total: int) -> None:
        self.calls += 1
        if done == self.fail_at:
            raise KeyboardInterrupt  # like Ctrl-C in the middle of the write


def test_second_conversion_reuses_the_file_and_another_quant_gets_its_own(checkpoint: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first_progress = Counter()
    q8 = convert_checkpoint(checkpoint, "q8_0", cache, on_tensor=first_progress)
    assert q8.parent == cache and q8.name.endswith("-Q8_0.gguf") and first_progress.calls == 24
    mtime = q8.stat().st_mtime_ns
    again = Counter()
    assert convert_checkpoint(checkpoint, "q8_0", cache, on_tensor=again) == q8
    assert again.calls == 0 and q8.stat().st_mtime_ns == mtime  # nothing rewritten
    q4k = convert_checkpoint(checkpoint, "q4_k_m", cache, on_tensor=Counter())
    assert q4k != q8 and q4k.name.endswith("-Q4_K_M.gguf")
    reader = gguf.GGUFReader(q4k)
    assert reader.fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    # A changed checkpoint (newer weights file) is a different key: converted again, the old file stays valid.
    weights = checkpoint / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    changed = convert_checkpoint(checkpoint, "q8_0", cache, on_tensor=Counter())
    assert changed != q8 and changed.is_file() and q8.is_file()
    assert sorted(p.name for p in cache.iterdir()) == sorted(p.name for p in (q8, q4k, changed))


def test_an_interrupted_conversion_leaves_no_file_behind(checkpoint: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(checkpoint, "q8_0", cache, on_tensor=Counter(fail_at=5))
    assert list(cache.iterdir()) == []  # neither the target nor a staging file
    done = convert_checkpoint(checkpoint, "q8_0", cache, on_tensor=Counter())
    assert [p.name for p in cache.iterdir()] == [done.name]


def test_llama_cpps_q8_0_equals_our_q8_0_writer_tensor_for_tensor(checkpoint: Path, tmp_path: Path) -> None:
    converted = gguf.GGUFReader(convert_checkpoint(checkpoint, "q8_0", tmp_path / "cache", on_tensor=Counter()))
    ours = gguf.GGUFReader(cached_test_gguf("Q8_0", shape="tiny"))
    theirs = {t.name: t for t in converted.tensors}
    assert set(theirs) == {t.name for t in ours.tensors}
    for tensor in ours.tensors:
        assert theirs[tensor.name].tensor_type == tensor.tensor_type, tensor.name
        assert np.array_equal(np.asarray(theirs[tensor.name].data), np.asarray(tensor.data)), tensor.name


# --- choosing the path ---------------------------------------------------------------------------------------


def test_auto_on_a_cpu_serves_a_checkpoint_as_q8_0_on_llama_cpp_and_says_why() -> None:
    runtime = choose_runtime(Settings(model="m", device="cpu"))
    assert (runtime.backend, runtime.quantize) == ("llamacpp", "q8_0")
    assert "measured" in runtime.reason and "q8_0" in runtime.reason
    assert choose_runtime(Settings(model="m", device="cpu", quantize="q4_k_m")).quantize == "q4_k_m"
    assert choose_runtime(Settings(model="m", backend="llamacpp")).quantize == "q8_0"
    torch_int8 = choose_runtime(Settings(model="m", device="cpu", quantize="int8"))
    assert (torch_int8.backend, torch_int8.quantize) == ("torch", "int8")
    assert choose_runtime(Settings(model="m", device="cpu", backend="torch")).quantize == "int8"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"backend": "torch", "quantize": "q8_0"}, "use --backend auto or llamacpp"),
        ({"backend": "reference", "quantize": "q4_0"}, "use --backend auto or llamacpp"),
        ({"backend": "llamacpp", "quantize": "int8"}, "runs on torch"),
        ({"backend": "llamacpp", "quantize": "none"}, "q8_0|q4_k_m|q4_0"),
    ],
)
def test_quantize_choices_that_cannot_work_are_refused_by_name(settings: dict[str, str], message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        choose_runtime(Settings(model="m", device="cpu", **settings))  # type: ignore[arg-type]


def test_a_gguf_file_refuses_a_conversion_quant() -> None:
    with pytest.raises(ModelLoadError, match="a GGUF file runs as it is"):
        choose_runtime(Settings(model="m.gguf", quantize="q4_0"), gguf=True)
    assert choose_runtime(Settings(model="m.gguf"), gguf=True).backend == "llamacpp"


def test_unknown_quantize_is_a_validation_error() -> None:
    with pytest.raises(ValueError, match="q8_0"):
        Settings(model="m", quantize="q5_1")  # type: ignore[arg-type]
