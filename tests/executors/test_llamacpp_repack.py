"""CPU_REPACK without AMX: which matrices of a GGUF take it, and that a runner serving them repacked computes what
the plain layout computes (the 0.6b-shape test model, 4 layers, Q4_0)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

pytest.importorskip("llama_cpp")
import llama_cpp  # noqa: E402

from qwen3_api.demo_models.gguf import cached_test_gguf  # noqa: E402
from qwen3_api.engine.protocols import BatchEntry  # noqa: E402
from qwen3_api.executors.llamacpp_repack import cpu_extra_buffer_types, cpu_has_avx2, repackable_tensors  # noqa: E402
from qwen3_api.executors.llamacpp_runner import LlamaCppModelRunner  # noqa: E402

DEEP = dict(shape="0.6b", num_layers=4, init_std=0.05)
MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
needs_avx2 = pytest.mark.skipif(not cpu_has_avx2(llama_cpp), reason="CPU_REPACK's x86 layouts need AVX2")


def gguf(qtype: str) -> Path:
    return Path(cached_test_gguf(qtype, **DEEP))  # type: ignore[arg-type]


def test_every_block_matrix_of_a_q4_0_file_and_nothing_of_a_q8_0_file() -> None:
    assert set(repackable_tensors(gguf("Q4_0"))) == {f"blk.{i}.{m}.weight" for i in range(4) for m in MATRICES}
    assert repackable_tensors(gguf("Q8_0")) == []  # no x86 repacked layout for Q8_0


@needs_avx2
def test_the_repack_buffer_type_is_found_in_the_library_llama_cpp_runs() -> None:
    assert "CPU_REPACK" in cpu_extra_buffer_types(llama_cpp)


def logits_of(path: Path, mode: str, prompt: list[int], kv_cache_type: str = "f16") -> tuple[int, list[torch.Tensor]]:
    runner = LlamaCppModelRunner(
        path, max_num_seqs=2, max_model_len=256, weight_repack=mode, kv_cache_type=kv_cache_type
    )
    try:
        # a prefill (matrix-matrix kernels) then one decode step (matrix-vector)
        first = runner.forward([BatchEntry(prompt[:39], 0, [], True, "a")])
        step = runner.forward([BatchEntry(prompt[39:], 39, [], True, "a")])
        return runner.repacked_tensors, [first[0], step[0]]
    finally:
        runner.close()


@needs_avx2
def test_repacked_matrices_are_as_close_to_float32_as_the_plain_layout() -> None:
    prompt = [random.Random(3).randrange(100, 150_000) for _ in range(40)]
    repacked_count, repacked = logits_of(gguf("Q4_0"), "cpu", prompt)
    plain_count, plain = logits_of(gguf("Q4_0"), "off", prompt)
    _, exact = logits_of(gguf("F32"), "off", prompt, kv_cache_type="f32")
    assert (repacked_count, plain_count) == (28, 0)
    for ours, theirs, reference in zip(repacked, plain, exact, strict=True):
        quantization_error = float((theirs - reference).abs().max())
        assert float((ours - reference).abs().max()) <= 1.25 * quantization_error
        assert float((ours - theirs).abs().max()) <= 0.5 * quantization_error  # a kernel's rounding, not Q4_0's


def test_the_tensor_directory_is_read_with_types_and_ggml_shapes() -> None:
    from qwen3_api.models.gguf import read_gguf_tensor_infos

    infos = {info.name: info for info in read_gguf_tensor_infos(gguf("Q8_0"))}
    assert len(infos) == 2 + 4 * 11  # embedding, final norm, 11 tensors per block (tied: no output matrix)
    assert (infos["token_embd.weight"].ggml_type, infos["token_embd.weight"].shape) == (8, (1024, 151936))  # Q8_0
    assert (infos["output_norm.weight"].ggml_type, infos["output_norm.weight"].shape) == (0, (1024,))  # F32
    assert infos["blk.3.ffn_down.weight"].shape == (3072, 1024)  # ne[0] = inputs, ne[1] = rows
