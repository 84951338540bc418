"""How the llama.cpp options resolve: the sequence ids kept for finished conversations, and what is refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from qwen3_api.config import Settings
from qwen3_api.errors import ModelLoadError
from qwen3_api.executors.llamacpp_options import MAX_SEQUENCES, retained_sequences_for


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

