"""The llama.cpp backend's prefix cache on disk: retained sequences (finished requests' KV cells, kept for
prefix reuse) with their token ids, through llama.cpp's sequence state.

Data file tensors: `tokens` int32 (every sequence's token ids, one after another), `token_offsets` int64
`[num_sequences + 1]`, `states` uint8 (llama.cpp's state of each sequence) and `state_offsets` likewise. The
manifest (`engine.snapshot_dir`) names the GGUF model identity, KV cell type, KV layout (one shared pool or one
per sequence), flash attention, cells per sequence and the GGUF's file type; llama.cpp's state layout depends on
them, so any difference rejects the snapshot.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from qwen3_api.engine.protocols import RetainedSequences, SequenceStates
from qwen3_api.engine.snapshot_dir import RejectedSnapshot, SnapshotDirectory

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SequenceCacheFormat:
    """What must match for stored llama.cpp sequence states to be valid here."""

    model_identity: str
    kv_cache_dtype: str
    kv_unified: bool
    flash_attention: bool
    n_ctx_seq: int
    quantization: str

    def manifest_fields(self) -> dict[str, Any]:
        return {"backend": "llamacpp", **asdict(self)}


def _offsets(tensor: torch.Tensor, count: int, total: int, name: str) -> list[int]:
    offsets = [int(x) for x in tensor.tolist()]
    if len(offsets) != count + 1 or offsets[0] != 0 or offsets[-1] != total or offsets != sorted(offsets):
        raise RejectedSnapshot(f"its {name} do not describe {count} sequences of {total} entries")
    return offsets


class SequenceStore:
    """llama.cpp snapshots of one format in one directory, the directory within `max_bytes`."""

    def __init__(self, directory: Path, max_bytes: int, fmt: SequenceCacheFormat) -> None:
        self.format = fmt
        self.files = SnapshotDirectory(directory, max_bytes, fmt.manifest_fields())

    @property
    def directory(self) -> Path:
        return self.files.directory

    @property
    def max_bytes(self) -> int:
        """Data bytes a snapshot may hold: states, token ids and offsets together."""
        return self.files.data_budget

    def save(self, snapshot: SequenceStates) -> Path:
        flat = [t for tokens in snapshot.tokens for t in tokens]
        token_offsets = [0]
        for tokens in snapshot.tokens:
            token_offsets.append(token_offsets[-1] + len(tokens))
        tensors = {
            "tokens": torch.tensor(flat, dtype=torch.int32),
            "token_offsets": torch.tensor(token_offsets, dtype=torch.int64),
            "states": snapshot.states,
            "state_offsets": torch.tensor(snapshot.offsets, dtype=torch.int64),
        }
        return self.files.save(tensors, {"num_sequences": len(snapshot), "num_tokens": len(flat)})

    def load(self) -> SequenceStates | None:
        stored = self.files.load()
        if stored is None:
            return None
        try:
            return self._decode(stored.manifest, stored.tensors)
        except (RejectedSnapshot, KeyError, ValueError, RuntimeError) as exc:
            logger.warning("prefix cache: ignoring the snapshot in %s: %s", self.directory, exc)
            return None

    @staticmethod
    def _decode(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> SequenceStates:
        count = manifest.get("num_sequences")
        if not isinstance(count, int) or count < 0:
            raise RejectedSnapshot(f"num_sequences is {count!r}")
        tokens, states = tensors["tokens"], tensors["states"]
        if tokens.dtype != torch.int32 or states.dtype != torch.uint8 or tokens.dim() != 1 or states.dim() != 1:
            raise RejectedSnapshot(f"the data holds {tokens.dtype} tokens and {states.dtype} states")
        token_offsets = _offsets(tensors["token_offsets"], count, tokens.numel(), "token offsets")
        state_offsets = _offsets(tensors["state_offsets"], count, states.numel(), "state offsets")
        flat = tokens.tolist()
        per_sequence = [flat[token_offsets[i] : token_offsets[i + 1]] for i in range(count)]
        return SequenceStates(per_sequence, states, state_offsets)


class LlamaCppPrefixCache:
    """The llama.cpp runner's retained sequences as a persistent prefix cache."""

    def __init__(self, runner: RetainedSequences, store: SequenceStore) -> None:
        self.runner = runner
        self.store = store

    def version(self) -> int:
        return self.runner.retained_version

    def export(self) -> SequenceStates:
        return self.runner.export_retained(self.store.max_bytes)

    def restore(self, snapshot: SequenceStates) -> str:
        sequences, tokens = self.runner.restore_retained(snapshot)
        return f"{sequences} of {len(snapshot)} sequences ({tokens} tokens)"

    def describe(self, snapshot: SequenceStates) -> str:
        return f"{len(snapshot)} sequences ({snapshot.num_tokens} tokens)"
