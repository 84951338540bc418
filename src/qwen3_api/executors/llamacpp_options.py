"""Resolved llama.cpp options: which `auto` choices the runner makes, and why (measured on this project's CPUs)."""

from __future__ import annotations

from qwen3_api.config import Settings
from qwen3_api.errors import ModelLoadError

WEIGHT_REPACK_MODES = ("auto", "on", "cpu", "off")
# llama.cpp's limit on sequence ids in one context (LLAMA_MAX_SEQ).
MAX_SEQUENCES = 256


def build_has_amx() -> bool:
    """True when llama.cpp was built with AMX int8 kernels and found AMX on this CPU."""
    import llama_cpp

    return b"AMX_INT8 = 1" in (llama_cpp.llama_print_system_info() or b"")


def resolve_weight_repack(mode: str) -> str:
    """Which repacked CPU weight layouts llama.cpp gets: "on" (its whole "extra buffer" list, `use_extra_bufts`),
    "cpu" (CPU_REPACK alone, through per-tensor overrides: `llamacpp_repack`) or "off".

    "auto" is "on" unless the build has AMX, then "cpu": the AMX buffer type comes first in the list and takes
    Q4_0/Q8_0 matrices, and its tile kernels (batches of 2+ tokens) die with SIGILL on virtual machines that report
    AMX (measured here: a Firecracker guest of a Xeon with amx_int8); CPU_REPACK's AVX2 layouts run there.
    """
    if mode not in WEIGHT_REPACK_MODES:
        raise ValueError(f"weight_repack must be one of {', '.join(WEIGHT_REPACK_MODES)}, got {mode!r}")
    if mode == "auto":
        return "cpu" if build_has_amx() else "on"
    return mode


def kv_unified_for(settings: Settings, budget_cells: int | None, max_model_len: int) -> bool:
    """`--llamacpp-kv-unified`, with unset resolved: per-sequence KV when every sequence gets its full
    `max_model_len` within `budget_cells` (None: no budget, every sequence at full length) and no finished
    conversations are kept, else one shared pool.

    A shared pool only helps where sequences would otherwise run short (a long request uses what idle ones do not)
    or cells are kept beyond the running sequences; it costs every decode step, as llama.cpp's attention in it
    spans every cell in use, masked per sequence, where a per-sequence stream spans its own (measured, 0.6b Q8_0,
    16 sequences, one decode step: 218 vs 184 ms after 64-token prompts, 318 vs 255 ms after 256-token ones)."""
    if settings.llamacpp_kv_unified is not None:
        return settings.llamacpp_kv_unified
    if settings.llamacpp_retained_sequences:
        return True
    return budget_cells is not None and budget_cells < settings.max_num_seqs * max_model_len


# Where --llamacpp-host-cache-memory is unset: this share of the memory left after weights and KV, at most the cap.
HOST_CACHE_SHARE = 0.25
HOST_CACHE_MAX_BYTES = 8 * 2**30


def host_cache_bytes_for(settings: Settings, free_bytes: int) -> int:
    """Bytes of host memory for finished sequences' saved states (`host_states`): `--llamacpp-host-cache-memory`
    GiB, else HOST_CACHE_SHARE of `free_bytes` (what weights and KV leave), at most HOST_CACHE_MAX_BYTES; 0 without
    prefix caching. A state costs what its cells do (0.6b shape, f16: 112 KiB per token, so 8 GiB holds ~75,000
    tokens of conversations); restoring one is a memory copy where recomputing it is a prefill."""
    if not settings.enable_prefix_caching:
        return 0
    if settings.llamacpp_host_cache_memory is not None:
        return int(settings.llamacpp_host_cache_memory * 2**30)
    return int(min(HOST_CACHE_SHARE * max(free_bytes, 0), HOST_CACHE_MAX_BYTES))


def flash_attention_for(settings: Settings) -> bool:
    """`--llamacpp-flash-attention`, with auto resolved: on (llama.cpp's fastest attention on a CPU: 16 sequences
    with per-sequence KV decode in 184 ms with it, 235 ms without), except where per-sequence KV was asked for
    explicitly, the batch-invariant setting: there it is the one thing that would make a sequence's logits depend
    on its batch-mates (measured: a 64-token prompt's greedy tokens changed beside 7 others)."""
    if settings.llamacpp_flash_attention == "auto":
        return settings.llamacpp_kv_unified is not False
    return settings.llamacpp_flash_attention == "on"


def retained_sequences_for(settings: Settings, max_num_seqs: int) -> int:
    """How many llama.cpp sequence ids beyond the running ones hold finished conversations for prefix reuse
    (`--llamacpp-retained-sequences`; shared pool only); refused when the total passes llama.cpp's limit.

    An idle sequence id costs one logits row (0.6 MB for Qwen3's vocabulary), but the cells it keeps do cost:
    llama.cpp's attention in the shared pool spans the cells in use, masked per sequence, so every decode step
    grows with what is kept (measured, 0.6b Q4_0, 16 sequences + 48 kept: 12-22 % fewer output tokens/s on fresh
    prompts). Where more conversations are open than run at once it pays many times over (12 conversations on 4
    sequences: 2.0x output tokens/s, their next turns prefill only the new part), hence opt-in."""
    kept = settings.llamacpp_retained_sequences  # 0 with per-sequence KV (Settings refuses more there)
    if kept and max_num_seqs + kept > MAX_SEQUENCES:
        raise ModelLoadError(
            f"--max-num-seqs ({max_num_seqs}) plus --llamacpp-retained-sequences ({kept}) is more than the "
            f"{MAX_SEQUENCES} sequences llama.cpp allows in one context"
        )
    return kept
