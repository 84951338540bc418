"""Loader decisions that need no model: llama.cpp's sequence default and per-sequence context."""

from __future__ import annotations

import pytest

from qwen3_api.config import Settings
from qwen3_api.errors import ModelLoadError
from qwen3_api.runtime.loader import (
    LLAMACPP_DEFAULT_MAX_NUM_SEQS,
    llamacpp_kv_plan,
    llamacpp_settings,
)

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
    settings = Settings(model="m", max_num_seqs=4, kv_cache_memory=1.0, llamacpp_kv_unified=False)
    assert llamacpp_kv_plan(settings, METADATA, model_bytes=0).max_model_len == 2**30 // 114_688 // 4  # 2340
    capped = Settings(model="m", max_num_seqs=1, kv_cache_memory=8.0, max_model_len=4096, llamacpp_kv_unified=False)
    assert llamacpp_kv_plan(capped, METADATA, model_bytes=0).max_model_len == 4096


def test_a_budget_too_small_for_the_sequences_is_refused() -> None:
    settings = Settings(model="m", max_num_seqs=1024, kv_cache_memory=0.1, llamacpp_kv_unified=False)
    with pytest.raises(ModelLoadError, match="too small for 1024 sequences"):
        llamacpp_kv_plan(settings, METADATA, model_bytes=0)


# -- the llama.cpp KV plan: budget from available memory, one shared pool or per-sequence shares ---------------

GIB = 2**30


def test_kv_budget_is_a_share_of_available_memory_less_the_weights() -> None:
    settings = Settings(model="m", max_num_seqs=4, llamacpp_kv_memory_share=0.5)
    plan = llamacpp_kv_plan(settings, METADATA, model_bytes=2 * GIB, available_bytes=22 * GIB)
    total = int(0.5 * 20 * GIB // 114_688)  # 93,622 cells
    # One shared pool: a single sequence may grow to the model's context, the pool holds what the budget allows.
    assert plan.max_model_len == 40960 and plan.cells == min(total, 4 * 40960)
    assert "50% of 22.0 GiB available less 2.0 GiB of weights" in plan.source
    assert plan.unified  # 4 x 40,960 tokens do not fit in 93,622 cells


def test_the_layout_is_per_sequence_where_every_sequence_fits_at_full_length() -> None:
    fits = Settings(model="m", max_num_seqs=16, max_model_len=1024)  # 16,384 of 93,622 cells
    plan = llamacpp_kv_plan(fits, METADATA, model_bytes=2 * GIB, available_bytes=22 * GIB)
    assert not plan.unified and plan.cells == 16 * 1024 and plan.max_model_len == 1024
    # Past the budget the shared pool keeps the full length for whichever sequence needs it.
    long = fits.model_copy(update={"max_model_len": 8192})  # 131,072 cells wanted
    plan = llamacpp_kv_plan(long, METADATA, model_bytes=2 * GIB, available_bytes=22 * GIB)
    assert plan.unified and plan.max_model_len == 8192 and plan.cells == int(0.5 * 20 * GIB // 114_688)
    # Kept conversations need the pool; a layout asked for is taken as it is.
    keeping = fits.model_copy(update={"llamacpp_retained_sequences": 4})
    assert llamacpp_kv_plan(keeping, METADATA, model_bytes=2 * GIB, available_bytes=22 * GIB).unified
    asked = fits.model_copy(update={"llamacpp_kv_unified": True})
    assert llamacpp_kv_plan(asked, METADATA, model_bytes=2 * GIB, available_bytes=22 * GIB).unified


def test_per_sequence_kv_splits_the_budget_evenly() -> None:
    settings = Settings(model="m", max_num_seqs=4, kv_cache_memory=1.0, llamacpp_kv_unified=False)
    plan = llamacpp_kv_plan(settings, METADATA, model_bytes=0)
    assert plan.max_model_len == GIB // 114_688 // 4 and plan.cells == 4 * plan.max_model_len
    # The same budget shared: one request may use all of it (the old per-sequence share was 2340 tokens).
    shared = llamacpp_kv_plan(settings.model_copy(update={"llamacpp_kv_unified": True}), METADATA, model_bytes=0)
    assert shared.max_model_len == GIB // 114_688 == shared.cells


def test_the_host_cache_gets_a_quarter_of_what_weights_and_kv_leave_at_most_8_gib() -> None:
    fits = Settings(model="m", max_num_seqs=16, max_model_len=1024)  # 16,384 cells: 1.75 GiB of KV
    plan = llamacpp_kv_plan(fits, METADATA, model_bytes=2 * GIB, available_bytes=12 * GIB)
    assert plan.host_cache_bytes == int(0.25 * (12 * GIB - 2 * GIB - 16 * 1024 * 114_688))
    big = llamacpp_kv_plan(fits, METADATA, model_bytes=2 * GIB, available_bytes=200 * GIB)
    assert big.host_cache_bytes == 8 * GIB
    asked = fits.model_copy(update={"llamacpp_host_cache_memory": 0.5})
    assert llamacpp_kv_plan(asked, METADATA, model_bytes=2 * GIB, available_bytes=12 * GIB).host_cache_bytes == GIB // 2
    for off in ({"llamacpp_host_cache_memory": 0.0}, {"enable_prefix_caching": False}):
        plan = llamacpp_kv_plan(fits.model_copy(update=off), METADATA, model_bytes=2 * GIB, available_bytes=12 * GIB)
        assert plan.host_cache_bytes == 0, off


def test_q8_0_cells_hold_almost_twice_the_tokens() -> None:
    settings = Settings(model="m", kv_cache_memory=1.0, kv_cache_dtype="q8_0", max_model_len=40960)
    assert llamacpp_kv_plan(settings, METADATA, model_bytes=0).max_model_len == int(GIB // (114_688 * 34 / 64))


def test_a_machine_without_memory_to_spare_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="too small"):
        llamacpp_kv_plan(Settings(model="m"), METADATA, model_bytes=8 * GIB, available_bytes=7 * GIB)


def test_the_shared_pool_has_room_for_the_conversations_it_keeps() -> None:
    # Cells for every sequence id at full length: the 4 running ones, and the 16 kept for finished conversations.
    settings = Settings(model="m", max_num_seqs=4, max_model_len=1024, llamacpp_kv_unified=True)
    assert llamacpp_kv_plan(settings, METADATA, model_bytes=2 * GIB, available_bytes=22 * GIB).cells == 4 * 1024
    keeping = settings.model_copy(update={"llamacpp_retained_sequences": 16})
    assert llamacpp_kv_plan(keeping, METADATA, model_bytes=2 * GIB, available_bytes=22 * GIB).cells == 20 * 1024
