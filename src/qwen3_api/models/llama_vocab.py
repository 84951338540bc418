"""llama.cpp's own vocabulary of a GGUF file: tokenization and token bytes exactly as llama.cpp does them.

Loaded with `vocab_only` (no weights: well under a second even for a 151k vocabulary), so any GGUF llama.cpp can
run has a tokenizer here, whatever its tokenizer model (byte-level BPE, SentencePiece, WordPiece, ...) and
pre-tokenizer: nothing is rebuilt, so nothing can drift from what llama.cpp itself would feed the model.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from pathlib import Path
from typing import Any

from qwen3_api.errors import ModelLoadError

logger = logging.getLogger(__name__)

_GGML_LOG_LEVEL_ERROR = 4
_log_callback: Any = None  # the ctypes callback must outlive every llama.cpp call: keep it referenced for good


def _forward_llama_log(level: int, text: bytes | None, _user_data: ctypes.c_void_p) -> None:
    # llama.cpp logs every key and tensor at load: keep only its errors, through our logging.
    if level == _GGML_LOG_LEVEL_ERROR and text:
        logger.error("llama.cpp: %s", text.decode(errors="replace").rstrip())


def init_llama_backend() -> None:
    """Initialise llama.cpp once per process and route its log to ours."""
    global _log_callback
    if _log_callback is not None:
        return
    import llama_cpp

    _log_callback = llama_cpp.llama_log_callback(_forward_llama_log)
    llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()


def cpu_has_amx() -> bool:
    """Whether the CPU reports AMX tiles (Linux /proc/cpuinfo)."""
    try:
        return " amx_tile" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def model_params(vocab_only: bool = False) -> Any:
    """llama.cpp model parameters as every model load here uses them.

    On CPUs that report AMX, llama.cpp's extra CPU buffer types (AMX and repacked weights) are turned off: on the
    AMX machines this project runs on (Firecracker VMs), llama.cpp's AMX matmul dies with SIGILL (`tilezero`) on
    the first prefill of a quantized file (Q4_1, Q8_0, ...), so quantized models could not run at all.
    """
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = vocab_only
    if cpu_has_amx():
        params.use_extra_bufts = False
    return params


class LlamaVocab:
    """The vocabulary llama.cpp reads from a GGUF file (vocab-only load; the file's weights are not touched)."""

    def __init__(self, path: str | Path) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self.path = Path(path)
        init_llama_backend()
        self._model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), model_params(vocab_only=True))
        if not self._model:
            raise ModelLoadError(f"llama.cpp could not read the vocabulary of {self.path} (see the log for its error)")
        self.pointer = llama_cpp.llama_model_get_vocab(self._model)
        self.n_tokens: int = llama_cpp.llama_vocab_n_tokens(self.pointer)
        self._buffer = ctypes.create_string_buffer(256)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` as llama.cpp makes them: no BOS/EOS added, special-token markers parsed."""
        data = text.encode()
        capacity = len(data) + 8  # never more tokens than bytes, plus room for what add_special could add
        tokens = (self._lib.llama_token * capacity)()
        count = self._lib.llama_tokenize(self.pointer, data, len(data), tokens, capacity, False, True)
        if count < 0:  # cannot happen with one token per byte at most; kept as a clear error, not a crash
            raise ValueError(f"llama.cpp needs {-count} tokens for a text of {len(data)} bytes")
        return list(tokens[:count])

    def piece(self, token_id: int) -> bytes:
        """The bytes llama.cpp renders for one token; control tokens as their text."""
        count = self._lib.llama_token_to_piece(self.pointer, token_id, self._buffer, len(self._buffer), 0, True)
        if count < 0:
            self._buffer = ctypes.create_string_buffer(-count)
            count = self._lib.llama_token_to_piece(self.pointer, token_id, self._buffer, len(self._buffer), 0, True)
        return bytes(self._buffer.raw[:count])

    def is_control(self, token_id: int) -> bool:
        """Whether llama.cpp treats the token as a control (special) token."""
        return bool(self._lib.llama_vocab_get_attr(self.pointer, token_id) & self._lib.LLAMA_TOKEN_ATTR_CONTROL)

    def is_end_of_generation(self, token_id: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self.pointer, token_id))

    def close(self) -> None:
        if self._model:
            self._lib.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown may have torn down the library already
            self.close()
