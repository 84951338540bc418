"""How the llama.cpp options resolve: the KV layout and flash attention, the sequence ids kept for finished
conversations, and what is refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from qwen3_api.config import Settings
from qwen3_api.errors import ModelLoadError
from qwen3_api.executors.llamacpp_options import (
    MAX_SEQUENCES,
    flash_attention_for,
    kv_unified_for,
    retained_sequences_for,
)


def settings(**fields: object) -> Settings:
    return Settings(model="unused", **fields)  # type: ignore[arg-type]


def test_kept_conversations_are_opt_in() -> None:
    assert retained_sequences_for(settings(), 4) == 0
    assert retained_sequences_for(settings(llamacpp_retained_sequences=5), 8) == 5


def test_more_than_llama_cpp_sequence_limit_is_refused_by_name() -> None:
    assert retained_sequences_for(settings(llamacpp_retained_sequences=MAX_SEQUENCES - 4), 4) == MAX_SEQUENCES - 4
    with pytest.raises(ModelLoadError, match=r"--max-num-seqs \(4\) plus --llamacpp-retained-sequences \(253\)"):
        retained_sequences_for(settings(llamacpp_retained_sequences=253), 4)


def test_per_sequence_kv_keeps_none_and_refuses_an_explicit_count_by_name() -> None:
    with pytest.raises(ValidationError, match="llamacpp_retained_sequences needs the shared KV pool"):
        settings(llamacpp_kv_unified=False, llamacpp_retained_sequences=4)
    with pytest.raises(ValidationError, match="llamacpp_retained_sequences"):
        settings(llamacpp_retained_sequences=-1)



def test_the_kv_layout_is_per_sequence_only_where_every_sequence_fits_at_full_length() -> None:
    assert not kv_unified_for(settings(max_num_seqs=4), 4 * 1024, 1024)
    assert not kv_unified_for(settings(max_num_seqs=4), None, 1024)  # no budget: every sequence at full length
    assert kv_unified_for(settings(max_num_seqs=4), 4 * 1024 - 1, 1024)
    assert kv_unified_for(settings(max_num_seqs=4, llamacpp_retained_sequences=2), 10**6, 1024)
    assert kv_unified_for(settings(llamacpp_kv_unified=True), None, 1024)
    assert not kv_unified_for(settings(llamacpp_kv_unified=False), 10, 1024)


def test_flash_attention_is_off_by_default_only_with_per_sequence_kv_asked_for() -> None:
    assert flash_attention_for(settings())  # whichever layout the budget gives
    assert flash_attention_for(settings(llamacpp_kv_unified=True))
    assert not flash_attention_for(settings(llamacpp_kv_unified=False))  # the batch-invariant setting
    assert flash_attention_for(settings(llamacpp_kv_unified=False, llamacpp_flash_attention="on"))
    assert not flash_attention_for(settings(llamacpp_flash_attention="off"))
