"""llama.cpp's repacked CPU weight layouts without its AMX ones: which tensors, and the overrides that place them.

llama.cpp offers weights "extra" CPU buffer types: AMX tiles first, then CPU_REPACK (Q4_0, Q4_K and IQ4_NL matrices
interleaved 8 rows at a time, for its AVX2 GEMM kernels: measured here on the 0.6b shape, Q4_0 prefill 1.8x and
16-sequence decode 1.3-1.9x the plain layout). `use_extra_bufts` takes both or neither, and on virtual machines that
report AMX the AMX kernels die with SIGILL. Naming each repackable matrix in `tensor_buft_overrides` (with the
extra list off) gives CPU_REPACK alone.

The buffer type must come from the very libggml-cpu instance llama.cpp runs: a wheel ships `libggml-cpu.so` and
`libggml-cpu.so.0` as two files, and loading the wrong one gives pointers llama.cpp does not recognise (it aborts
on the first graph). The `.so.0` files are what libllama links against; the device found through them is checked
against llama.cpp's device registry.
"""

from __future__ import annotations

import ctypes
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwen3_api.models.gguf import read_gguf_tensor_infos

logger = logging.getLogger(__name__)

REPACK_BUFFER_TYPE = "CPU_REPACK"
# Types CPU_REPACK takes on x86 with AVX2, each when the matrix has a multiple of 8 rows (ggml's repack.cpp), by
# ggml type id: Q4_0, Q4_K, IQ4_NL.
X86_REPACK_TYPES = {2: "Q4_0", 12: "Q4_K", 20: "IQ4_NL"}
ROWS_MULTIPLE = 8
# Only matrices of the transformer blocks: every use of them is a matrix product, which CPU_REPACK computes (the
# token embedding is also read by row lookups, which it cannot serve).
_BLOCK_MATRIX = re.compile(r"^blk\.\d+\.[a-z_0-9]+\.weight$")


class _Override(ctypes.Structure):
    """`struct llama_model_tensor_buft_override { const char * pattern; ggml_backend_buffer_type_t buft; }`."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


@dataclass
class TensorOverrides:
    """A NULL-terminated override array for `llama_model_params.tensor_buft_overrides`, kept alive with its
    pattern strings for as long as the model loads."""

    array: Any
    count: int

    @property
    def pointer(self) -> int:
        return ctypes.cast(self.array, ctypes.c_void_p).value or 0


def repackable_tensors(gguf_path: Path) -> list[str]:
    """Names of the block matrices of `gguf_path` that CPU_REPACK takes on an AVX2 CPU."""
    return [
        tensor.name
        for tensor in read_gguf_tensor_infos(gguf_path)
        if _BLOCK_MATRIX.match(tensor.name)
        and tensor.ggml_type in X86_REPACK_TYPES
        and len(tensor.shape) == 2
        and tensor.shape[1] % ROWS_MULTIPLE == 0
    ]


def cpu_has_avx2(llama_cpp: Any) -> bool:
    return b"AVX2 = 1" in (llama_cpp.llama_print_system_info() or b"")


def cpu_extra_buffer_types(llama_cpp: Any) -> dict[str, int]:
    """Name -> buffer type of the CPU device's extra buffer types, from the library instance llama.cpp runs;
    empty when they cannot be found there."""
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    try:
        base = ctypes.CDLL(str(lib_dir / "libggml-base.so.0"))
        registry = ctypes.CDLL(str(lib_dir / "libggml.so.0"))
    except OSError as exc:
        logger.debug("ggml libraries not found for weight repacking: %s", exc)
        return {}
    registry.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    registry.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    base.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
    base.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
    base.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    base.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    base.ggml_backend_buft_name.restype = ctypes.c_char_p
    base.ggml_backend_buft_name.argtypes = [ctypes.c_void_p]
    device = registry.ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU: the device llama.cpp uses
    if not device:
        return {}
    address = base.ggml_backend_reg_get_proc_address(
        base.ggml_backend_dev_backend_reg(device), b"ggml_backend_dev_get_extra_bufts"
    )
    if not address:
        return {}
    get_extra = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(address)
    listed = get_extra(device)
    found: dict[str, int] = {}
    index = 0
    while listed and listed[index]:
        found[base.ggml_backend_buft_name(listed[index]).decode()] = int(listed[index])
        index += 1
    return found


def repack_overrides(llama_cpp: Any, gguf_path: Path) -> TensorOverrides | None:
    """Overrides placing every repackable matrix of `gguf_path` in CPU_REPACK, or None when there are none (no
    AVX2, no such buffer type in this build, or no matrix of a type it takes)."""
    if not cpu_has_avx2(llama_cpp):
        return None
    buffer_type = cpu_extra_buffer_types(llama_cpp).get(REPACK_BUFFER_TYPE)
    names = repackable_tensors(gguf_path) if buffer_type is not None else []
    if not names:
        return None
    array = (_Override * (len(names) + 1))()
    for entry, name in zip(array, names, strict=False):
        entry.pattern = f"^{re.escape(name)}$".encode()
        entry.buft = buffer_type
    array[len(names)].pattern = None
    array[len(names)].buft = None
    return TensorOverrides(array, len(names))
