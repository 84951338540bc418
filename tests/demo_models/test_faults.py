"""Fault options of a test model spec are split off before the model is resolved; other names pass through."""

from __future__ import annotations

from qwen3_api.demo_models.faults import Faults, split_faults


def test_fault_options_are_split_off_and_the_rest_is_kept() -> None:
    assert split_faults("test:tiny:gguf=F32,delay_ms=40,nan_token=7") == ("test:tiny:gguf=F32", Faults(40.0, None, 7))
    assert split_faults("test:tiny:die_token=3") == ("test:tiny", Faults(die_token=3))


def test_names_without_fault_options_are_unchanged() -> None:
    for name in ("test:tiny", "test:tiny:gguf=Q8_0", "Qwen/Qwen3-4B-Instruct-2507", "/models/x:delay_ms=1"):
        assert split_faults(name) == (name, None)
