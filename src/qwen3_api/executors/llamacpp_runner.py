"""A model runner on llama.cpp's low-level API: our scheduler and sampler drive a GGUF model, many sequences per
`llama_decode`.

Each request gets a llama.cpp sequence id (a "slot") on first sight. Two KV layouts:

- per-sequence (`kv_unified=False`, flash attention off): every slot owns `n_ctx / n_seq_max` cells, and a
  sequence's logits do not depend on what else is in the batch (bit-identical to running alone); the scheduler's
  block accounting only has to guarantee `max_num_seqs * max_model_len` tokens;
- one shared pool (`kv_unified=True`, what the server uses by default, with flash attention): any sequence may
  grow into the cells idle ones do not use, and the scheduler's blocks are the pool's cells. A sequence's logits
  then depend on where its cells sit among the others' (measured: max |diff| 0.08-0.16 against running alone on
  the 4-layer test model, argmax unchanged), so outputs are deterministic but not batch-invariant.

The block tables the scheduler hands out are ignored here: llama.cpp places K/V itself, by (sequence id,
position).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from qwen3_api.engine.protocols import BatchEntry, SequenceStates
from qwen3_api.errors import EngineError, ModelLoadError
from qwen3_api.executors.host_states import HostStateCache
from qwen3_api.executors.llamacpp_batch import Token, check_batch, flatten
from qwen3_api.executors.llamacpp_options import resolve_weight_repack
from qwen3_api.executors.llamacpp_repack import repack_overrides
from qwen3_api.executors.llamacpp_slot_ops import SlotOps
from qwen3_api.executors.llamacpp_state import read_retained, write_retained
from qwen3_api.executors.slot_pool import SlotPool
from qwen3_api.models.llama_vocab import init_llama_backend

logger = logging.getLogger(__name__)

# llama.cpp pads the context to a multiple of this many cells.
CTX_PAD = 256
# llama.cpp's own physical batch: a step of up to n_batch tokens is computed in ubatches of this many tokens, each a
# matrix-matrix product over the weights.
DEFAULT_UBATCH = 512
_GGML_TYPES = {"f32": 0, "f16": 1, "q8_0": 8}  # enum ggml_type
# Bytes of one K or V element per KV cell type (q8_0: 34-byte blocks of 32).
KV_BYTES_PER_ELEMENT = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32}
_LLAMA_FLASH_ATTN_TYPE_DISABLED = 0
_LLAMA_FLASH_ATTN_TYPE_ENABLED = 1


def default_num_threads() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class LlamaCppModelRunner:
    """Computes engine steps with llama.cpp; `forward` puts every entry of a step in one batch (or a few, if it
    is longer than `n_batch` tokens)."""

    def __init__(
        self,
        gguf_path: str | Path,
        *,
        max_num_seqs: int,
        max_model_len: int,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        n_batch: int = 512,
        n_ubatch: int | None = None,
        kv_cache_type: str = "f16",
        flash_attention: bool = False,
        reuse_prefixes: bool = False,
        min_reuse_tokens: int = 16,
        min_copy_tokens: int = 64,
        weight_repack: str = "auto",
        kv_unified: bool = False,
        kv_cells: int | None = None,
        retained_sequences: int = 0,
        host_cache_bytes: int = 0,
        max_draft_tokens: int = 0,
    ) -> None:
        """`kv_cache_type` "f32" makes logits of an F32 GGUF match a float32 reference to ~1e-5 instead of ~1e-3
        relative, at twice the KV memory. `flash_attention` stays off by default: with it, llama.cpp's CPU logits of
        a sequence change with what else is in the batch (measured: up to 0.35 on sequences of 64+ tokens), which
        would break batch invariance (a seeded request must give the same tokens alone and in a busy batch).
        `reuse_prefixes` keeps finished requests' cells for later prompts that start the same way (see
        `SlotPool`, which also explains the two thresholds).

        `kv_unified` puts all sequences' cells in one pool of `kv_cells` (default max_num_seqs * max_model_len), so
        one long request can use what idle sequences do not; the caller must then keep the live tokens within
        the pool (the engine's block accounting does), and retained prefixes are dropped when cells run short.
        `retained_sequences` (shared pool only) adds sequence ids beyond `max_num_seqs` for finished requests'
        cells, so more conversations than run at once keep their prefixes. `host_cache_bytes` (with
        `reuse_prefixes`) keeps the cells of finished requests whose sequence id is needed again in host memory,
        restored when a later prompt starts the same way (`host_states`).
        "q8_0" cells need flash attention (llama.cpp refuses quantized V cells without), so it is turned on.
        `n_threads_batch` (prefill; default `n_threads`) and `n_ubatch` (physical batch; default DEFAULT_UBATCH, at
        most `n_batch`) are llama.cpp's own knobs. `max_draft_tokens` (speculative decoding) is the most draft
        tokens an entry carries: each gets a logits row."""
        import llama_cpp

        if kv_cache_type not in _GGML_TYPES:
            raise ValueError(f"kv_cache_type must be one of {', '.join(_GGML_TYPES)}, got {kv_cache_type!r}")
        for name, value in (("max_num_seqs", max_num_seqs), ("max_model_len", max_model_len), ("n_batch", n_batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if retained_sequences < 0 or (retained_sequences and not kv_unified):
            raise ValueError(f"retained_sequences ({retained_sequences}) must be >= 0, and 0 without kv_unified")
        self._lib = llama_cpp
        self.gguf_path = Path(gguf_path)
        if not self.gguf_path.is_file():
            raise ModelLoadError(f"GGUF file not found: {self.gguf_path}")
        self.max_num_seqs = max_num_seqs
        self.n_threads = n_threads or default_num_threads()
        self.n_threads_batch = n_threads_batch or self.n_threads
        self.kv_unified = kv_unified
        self.flash_attention = flash_attention or kv_cache_type == "q8_0"
        self._model = self._ctx = self._batch = None
        init_llama_backend()

        model_params = llama_cpp.llama_model_default_params()
        self.weight_repack = resolve_weight_repack(weight_repack)
        model_params.use_extra_bufts = self.weight_repack == "on"
        # "cpu": the matrices CPU_REPACK takes, named one by one (kept alive while the model loads)
        overrides = repack_overrides(llama_cpp, self.gguf_path) if self.weight_repack == "cpu" else None
        self.repacked_tensors = overrides.count if overrides is not None else 0
        if overrides is not None:
            model_params.tensor_buft_overrides = overrides.pointer
        self._model = llama_cpp.llama_model_load_from_file(str(self.gguf_path).encode(), model_params)
        if not self._model:
            raise ModelLoadError(f"llama.cpp could not load {self.gguf_path} (see the log for its error)")
        self.vocab_size: int = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self._model))
        self.n_ctx_train: int = llama_cpp.llama_model_n_ctx_train(self._model)

        params = llama_cpp.llama_context_default_params()
        # kv_unified=False gives each sequence n_ctx / n_seq_max cells of its own; True one pool for all.
        num_slots = max_num_seqs + retained_sequences
        params.n_seq_max = num_slots
        params.kv_unified = kv_unified
        if kv_unified:
            cells = kv_cells if kv_cells is not None else max_num_seqs * max_model_len
            params.n_ctx = math.ceil(max(cells, max_model_len) / CTX_PAD) * CTX_PAD
        else:
            params.n_ctx = max_num_seqs * (math.ceil(max_model_len / CTX_PAD) * CTX_PAD)
        params.n_batch = n_batch
        # The compute buffer scales with the physical batch; llama.cpp keeps it within n_batch.
        params.n_ubatch = n_ubatch or DEFAULT_UBATCH
        # Without this cap, llama.cpp reserves logits for every batch position (n_batch x vocab floats, ~300 MB at
        # 512 x 151,936). A step asks for at most one row per running sequence, plus one per draft token; llama.cpp
        # itself reserves one row per sequence id (0.6 MB each for Qwen3's vocabulary).
        params.n_outputs_max = self.n_outputs_max = max(min(max_num_seqs * (1 + max_draft_tokens), n_batch), num_slots)
        params.n_threads = self.n_threads
        params.n_threads_batch = self.n_threads_batch
        params.no_perf = True
        params.type_k = params.type_v = _GGML_TYPES[kv_cache_type]
        params.flash_attn_type = (
            _LLAMA_FLASH_ATTN_TYPE_ENABLED if self.flash_attention else _LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        self._ctx = llama_cpp.llama_init_from_model(self._model, params)
        if not self._ctx:
            self.close()
            raise ModelLoadError(
                f"llama.cpp could not create a context of {params.n_ctx} tokens for {max_num_seqs} sequences "
                f"(see the log for its error); lower --max-num-seqs or --max-model-len"
            )
        self.n_ctx_seq: int = llama_cpp.llama_n_ctx_seq(self._ctx)
        self.n_ctx: int = llama_cpp.llama_n_ctx(self._ctx)
        if self.n_ctx_seq < max_model_len:
            self.close()
            raise ModelLoadError(f"llama.cpp gave {self.n_ctx_seq} cells per sequence, fewer than {max_model_len}")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        # llama.cpp caps the logical batch at the context's cells; `forward` splits by what it really took.
        self.n_batch = n_batch = llama_cpp.llama_n_batch(self._ctx)
        self.n_ubatch: int = llama_cpp.llama_n_ubatch(self._ctx)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        host = HostStateCache(host_cache_bytes) if reuse_prefixes and host_cache_bytes > 0 else None
        self._pool = SlotPool(
            num_slots, reuse_prefixes=reuse_prefixes, min_reuse_tokens=min_reuse_tokens,
            min_copy_tokens=min_copy_tokens, compact=not kv_unified, host=host,
        )  # fmt: skip
        self._ops = SlotOps(llama_cpp, self._ctx, self._memory, self._pool, self._prefill)
        logger.info(
            "llama.cpp: %s, vocab %d, %d sequences (+%d for finished ones' prefixes), %s KV of %d %s cells, batch "
            "%d/%d, %d/%d threads, flash attention %s, weight repacking %s, host cache of finished sequences %s",
            self.gguf_path.name, self.vocab_size, max_num_seqs, retained_sequences,
            "one shared" if kv_unified else "per-sequence", self.n_ctx if kv_unified else self.n_ctx_seq,
            kv_cache_type, n_batch, self.n_ubatch, self.n_threads,
            self.n_threads_batch, "on" if self.flash_attention else "off",
            _repack_note(self.weight_repack, self.repacked_tensors),
            f"{host_cache_bytes / 2**30:.1f} GiB" if host is not None else "off",
        )  # fmt: skip

    # -- per-request state ---------------------------------------------------------------------------------

    @property
    def host_cache(self) -> HostStateCache | None:
        """The host-memory cache of finished sequences' saved states (None when off); the pool plans with it."""
        return self._pool.host

    @property
    def num_free_slots(self) -> int:
        """Sequence ids a new request can take (retained ones included: their cache is dropped then)."""
        return self._pool.num_free

    @property
    def num_slots(self) -> int:
        """Sequence ids in all: `max_num_seqs` running ones plus those kept for finished requests' prefixes."""
        return self._pool.num_slots

    @property
    def num_retained_slots(self) -> int:
        """Sequence ids of finished requests whose cells are kept for prefix reuse."""
        return self._pool.num_retained

    def slot_of(self, request_id: str) -> int | None:
        """The llama.cpp sequence id `request_id` holds, if any (for tests and debugging)."""
        slot = self._pool.slot_of(request_id)
        return slot.seq_id if slot is not None else None

    def lookup_prefix(self, request_id: str, token_ids: list[int]) -> int:
        """How many leading tokens of a new request's `token_ids` need no computing: llama.cpp already holds
        their K/V in some sequence, which this request's first `forward` takes over or copies. The scheduler's
        prefix source on this backend."""
        return self._pool.lookup(request_id, token_ids)

    def release(self, request_ids: Iterable[str]) -> None:
        """Free the sequence ids of finished, aborted or preempted requests (their cells kept for prefix reuse,
        or cleared)."""
        for request_id in request_ids:
            op = self._pool.release(request_id)
            if op is not None:
                self._ops.run(op)

    # -- retained sequences on disk (engine.sequence_store) ---------------------------------------------------

    @property
    def retained_version(self) -> int:
        """Changes whenever a finished sequence is retained."""
        host = self._pool.host
        return self._pool.num_retentions + (host.num_saved if host is not None else 0)

    def export_retained(self, max_bytes: int) -> SequenceStates:
        """The retained sequences' tokens and llama.cpp state, hottest first, then the host cache's, within
        `max_bytes`."""
        return read_retained(self._lib, self._ctx, self._pool, max_bytes)

    def restore_retained(self, snapshot: SequenceStates) -> tuple[int, int]:
        """Put stored sequences into empty slots as retained ones (before serving), while cells allow, the rest
        into the host cache while it has room; returns (sequences, tokens) restored. Later prompts reuse them as
        they would a finished request's."""
        if not self._pool.reuse_prefixes:
            return 0, 0
        total = self.n_ctx if self.kv_unified else self.n_ctx_seq * self.max_num_seqs
        return write_retained(self._lib, self._ctx, self._memory, self._pool, snapshot,
                              max_tokens_per_seq=self.n_ctx_seq, max_total_tokens=total)  # fmt: skip

    def stats(self) -> dict[str, float]:
        """The host-memory cache's size and counts, for the engine's metrics (absent when it is off)."""
        host = self._pool.host
        return host.stats() if host is not None else {}

    def rollback(self, request_id: str, num_tokens: int) -> None:
        """Keep only the first `num_tokens` positions of a request's sequence: the K/V of draft tokens the sampler
        rejected is dropped (llama_memory_seq_rm), and the slot's recorded tokens shrink with it."""
        slot = self._pool.slot_of(request_id)
        if slot is not None and num_tokens < slot.num_cached:
            self._ops.run(self._pool.truncate(request_id, num_tokens))

    def _prefill(self, seq_id: int, token_ids: list[int]) -> None:
        """Compute `token_ids` into the empty sequence `seq_id` from position 0, no logits."""
        tokens = [(token_id, position, seq_id, False) for position, token_id in enumerate(token_ids)]
        for begin in range(0, len(tokens), self.n_batch):
            self._decode(tokens[begin : begin + self.n_batch], torch.empty(0), 0)

    # -- compute -------------------------------------------------------------------------------------------

    def forward(self, batch: list[BatchEntry]) -> torch.Tensor:
        """Compute the batch's new tokens and return float32 logits [rows, vocab], in batch order: for each entry
        with need_logits, its last new token's row, or with drafts the rows of its last 1 + num_draft_tokens."""
        rows = sum(1 + e.num_draft_tokens for e in batch if e.need_logits)
        logits = torch.empty(rows, self.vocab_size, dtype=torch.float32)
        if not batch:
            return logits
        check_batch(batch, n_outputs_max=self.n_outputs_max, n_ctx_seq=self.n_ctx_seq, vocab_size=self.vocab_size)
        # Slots are resolved (and stale cells cleared) before the batch is built.
        seq_ids = self._ops.assign_slots(batch, self.n_ctx if self.kv_unified else None)
        tokens, destinations = flatten(batch, seq_ids, keep_order=self.kv_unified)
        row = 0
        try:
            for begin in range(0, len(tokens), self.n_batch):
                row = self._decode(tokens[begin : begin + self.n_batch], logits, row, destinations)
        except Exception:
            # Earlier sub-batches may have written cells: drop everything past what each slot records, so the
            # request can be retried from its start position.
            for entry in batch:
                slot = self._pool.slot_of(entry.request_id)
                if slot is not None:
                    self._ops.run(self._pool.truncate(entry.request_id, slot.num_cached))
            raise
        for entry in batch:
            self._pool.record(entry.request_id, entry.start_position, entry.token_ids)
        return logits

    def _decode(self, tokens: list[Token], logits: torch.Tensor, row: int,
                destinations: list[int] | None = None) -> int:  # fmt: skip
        """One `llama_decode` of at most n_batch tokens; copies its logits into `logits` from output row `row` on
        (`destinations`: the row of `logits` each output row goes to, when the tokens were reordered)."""
        lib, batch = self._lib, self._batch
        if batch is None:
            raise EngineError("the llama.cpp runner is closed")
        output_indices = []
        for i, (token_id, position, seq_id, wants_logits) in enumerate(tokens):
            batch.token[i] = token_id
            batch.pos[i] = position
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq_id
            batch.logits[i] = wants_logits
            if wants_logits:
                output_indices.append(i)
        batch.n_tokens = len(tokens)
        code = lib.llama_decode(self._ctx, batch)
        if code != 0:
            # Cells a failed decode may have written are not tracked by num_cached; the next entry of such a
            # request starts where we think it does, and llama.cpp rejects it if that is not consistent.
            raise EngineError(f"llama_decode failed with code {code} on a batch of {len(tokens)} tokens")
        if output_indices:
            self._copy_logits(logits, row, len(output_indices), destinations)
        return row + len(output_indices)

    def _copy_logits(self, logits: torch.Tensor, row: int, count: int, destinations: list[int] | None) -> None:
        """Copy the last decode's `count` output rows into `logits[row : row + count]` (or the `destinations` rows
        of those) in one go: llama.cpp keeps the rows of the positions that asked for logits contiguous, in the
        order of the tokens it was given."""
        pointer = self._lib.llama_get_logits(self._ctx)
        if not pointer:
            raise EngineError("llama.cpp returned no logits")
        source = torch.from_numpy(np.ctypeslib.as_array(pointer, shape=(count, self.vocab_size)))
        if destinations is None:
            logits[row : row + count] = source
        else:
            logits[destinations[row : row + count]] = source

    def close(self) -> None:
        """Free the batch, context and model (idempotent)."""
        lib = self._lib
        if self._batch is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            lib.llama_free(self._ctx)
        self._ctx = None
        if self._model:
            lib.llama_model_free(self._model)
        self._model = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown the library may already be gone
            self.close()


def _repack_note(mode: str, repacked: int) -> str:
    if mode == "cpu":
        return f"CPU_REPACK for {repacked} matrices (no AMX)" if repacked else "off (no matrix CPU_REPACK takes)"
    return mode
