"""llama-cpp-python's own high-level `Llama`, loaded with the model parameters our runner uses, as a reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qwen3_api.models.llama_vocab import model_params


def reference_llama(path: Path, **kwargs: Any) -> Any:
    """`llama_cpp.Llama(model_path=path, **kwargs)` with `qwen3_api.models.llama_vocab.model_params()` (on AMX
    CPUs that turns off the extra buffer types whose AMX matmul crashes on this machine class)."""
    import llama_cpp
    import llama_cpp.llama as high_level

    default = high_level.llama_cpp.llama_model_default_params
    high_level.llama_cpp.llama_model_default_params = model_params  # read once, in Llama.__init__
    try:
        return llama_cpp.Llama(model_path=str(path), verbose=False, **kwargs)
    finally:
        high_level.llama_cpp.llama_model_default_params = default
