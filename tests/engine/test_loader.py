"""Loader decisions that need no model: llama.cpp's sequence default and per-sequence context."""

from __future__ import annotations

import pytest

from qwen3_api.config import Settings
from qwen3_api.engine.loader import LLAMACPP_DEFAULT_MAX_NUM_SEQS, gguf_max_model_len, llamacpp_settings
from qwen3_api.errors import ModelLoadError

# 28 layers x 8 KV heads x 128 dims x (K, V) x 2 bytes = 114,688 bytes per token (the 0.6b shape).
METADATA = {
    "general.architecture": "qwen3",
    "qwen3.context_length": 40960,
    "qwen3.block_count": 28,
    "qwen3.attention.head_count_kv": 8,
    "qwen3.attention.key_length": 128,
}


def test_llamacpp_serves_fewer_sequences_unless_told() -> None:
    assert llamacpp_settings(Settings(model="m")).max_num_seqs == LLAMACPP_DEFAULT_MAX_NUM_SEQS
    assert llamacpp_settings(Settings(model="m", max_num_seqs=16)).max_num_seqs == 16


def test_llamacpp_sequence_count_from_the_environment_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWEN3_API_MAX_NUM_SEQS", "9")
    assert llamacpp_settings(Settings(model="m")).max_num_seqs == 9


def test_each_sequence_gets_its_share_of_the_kv_budget() -> None:
    settings = Settings(model="m", max_num_seqs=4, kv_cache_memory=1.0)
    assert gguf_max_model_len(settings, METADATA) == 2**30 // 114_688 // 4  # 2340
    capped = Settings(model="m", max_num_seqs=1, kv_cache_memory=8.0, max_model_len=4096)
    assert gguf_max_model_len(capped, METADATA) == 4096


def test_a_budget_too_small_for_the_sequences_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="too small for 1024 sequences"):
        gguf_max_model_len(Settings(model="m", max_num_seqs=1024, kv_cache_memory=0.1), METADATA)
