"""The prefix cache on disk: which blocks are chosen, the round trip into a fresh engine, and what is refused."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from pathlib import Path

import pytest
import torch

from qwen3_api.config import Settings
from qwen3_api.demo_models.checkpoints import cached_test_model
from qwen3_api.engine import snapshot_dir
from qwen3_api.engine.kv_cache import KVCacheManager
from qwen3_api.engine.llm_engine import LLMEngine
from qwen3_api.engine.prefix_store import HASH_BYTES, PrefixCacheFormat, PrefixSnapshot, PrefixStore
from qwen3_api.engine.sampling import SamplingParams
from qwen3_api.engine.sequence import Sequence
from qwen3_api.engine.snapshot_dir import MANIFEST, METADATA_ALLOWANCE
from qwen3_api.engine.tokenizer import Tokenizer
from qwen3_api.runtime.torch_engine import build_llm_engine

BLOCK = 4
SHAPE = (2, 2, BLOCK, 1, 3)  # layers, K/V, block size, heads, head dim
FORMAT = PrefixCacheFormat("model-a", "float32", "none", BLOCK, SHAPE)


def seq(request_id: str, tokens: list[int]) -> Sequence:
    return Sequence(request_id, tokens, SamplingParams(max_tokens=4), 0)


def cache_prompt(kv: KVCacheManager, request_id: str, tokens: list[int]) -> Sequence:
    """Admit `tokens`, mark them computed and cached, and free the sequence (its blocks stay cached)."""
    s = seq(request_id, tokens)
    assert kv.admit(s, kv.lookup(s), len(tokens))
    s.num_computed_tokens = len(tokens)
    kv.cache_computed_blocks(s)
    kv.free(s)
    return s


# ---- which blocks ------------------------------------------------------------------------------------------------
def test_hottest_blocks_come_with_their_parents_first_and_within_the_limit() -> None:
    kv = KVCacheManager(num_blocks=32, block_size=BLOCK)
    cache_prompt(kv, "old", list(range(100, 113)))  # 3 full blocks
    cache_prompt(kv, "new", list(range(200, 209)))  # 2 full blocks, freed last: hottest
    chosen = kv.hottest_cached_blocks(max_blocks=32)
    assert len(chosen) == 5
    seen: set[bytes] = set()
    for block_hash, parent, _ in chosen:
        assert parent is None or parent in seen  # every parent listed before its children
        seen.add(block_hash)
    limited = kv.hottest_cached_blocks(max_blocks=3)
    # the newest chain whole, then the older chain's head: a chain's head serves more prompts than its tail
    assert len(limited) == 3 and [p is None for _, p, _ in limited] == [True, False, True]
    assert {h for h, _, _ in limited} <= seen
    kv.check_invariants()


def test_imported_blocks_are_hit_by_the_same_prompt() -> None:
    source = KVCacheManager(num_blocks=32, block_size=BLOCK)
    tokens = list(range(300, 318))
    cache_prompt(source, "a", tokens)
    chosen = source.hottest_cached_blocks(32)
    target = KVCacheManager(num_blocks=32, block_size=BLOCK)
    assigned = target.import_cached_blocks([(h, p) for h, p, _ in chosen])
    assert None not in assigned and target.num_free_blocks == 32  # idle, evictable
    target.check_invariants()
    assert target.lookup(seq("b", tokens)).num_tokens == 16  # 4 full blocks before the last token
    assert target.lookup(seq("c", [1, *tokens])).num_tokens == 0


# ---- the store ---------------------------------------------------------------------------------------------------
def snapshot(count: int = 3) -> PrefixSnapshot:
    hashes = [bytes([i]) * 32 for i in range(count)]
    parents = [None, *hashes[:-1]]
    layers, two, block, heads, dim = SHAPE
    return PrefixSnapshot(hashes, parents, torch.randn(layers, two, count, block, heads, dim))


BLOCK_BYTES = 2 * 2 * BLOCK * 1 * 3 * 4


def store(directory: Path, fmt: PrefixCacheFormat = FORMAT, max_blocks: int = 100) -> PrefixStore:
    """A store whose directory budget holds `max_blocks` blocks per snapshot (with their hashes), twice over."""
    per_snapshot = max_blocks * (BLOCK_BYTES + 2 * HASH_BYTES + 1) + METADATA_ALLOWANCE
    return PrefixStore(directory, 2 * per_snapshot, fmt, BLOCK_BYTES)


def test_round_trip_is_exact_and_bounded(tmp_path: Path) -> None:
    saved = snapshot(5)
    bounded = store(tmp_path, max_blocks=4)
    bounded.save(saved)
    loaded = store(tmp_path).load(max_blocks=100)
    assert loaded is not None and loaded.hashes == saved.hashes[:4] and loaded.parents == saved.parents[:4]
    assert torch.equal(loaded.kv, saved.kv[:, :, :4])
    assert len(store(tmp_path).load(max_blocks=2)) == 2  # type: ignore[arg-type]  # up to the KV budget
    bounded.save(snapshot(6))  # a second snapshot replaces the first
    assert len(list(tmp_path.iterdir())) == 2 and bounded.files.disk_bytes() <= bounded.files.max_bytes


MISMATCHES = {
    "model identity": dict(model_identity="model-b"),
    "dtype": dict(dtype="bfloat16"),
    "quantization": dict(quantization="int8"),
    "block size": dict(block_size=8),
    "block shape": dict(block_shape=(3, 2, BLOCK, 1, 3)),
}


@pytest.mark.parametrize("change", list(MISMATCHES))
def test_mismatched_snapshot_is_ignored_with_one_line(tmp_path: Path, change: str, caplog: pytest.LogCaptureFixture) -> None:
    store(tmp_path).save(snapshot())
    other = dataclasses.replace(FORMAT, **MISMATCHES[change])  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="qwen3_api.engine"):
        assert store(tmp_path, other).load(100) is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "ignoring" in lines[0], lines


def write_manifest(directory: Path, edit: dict) -> None:  # type: ignore[type-arg]
    manifest = json.loads((directory / MANIFEST).read_text())
    (directory / MANIFEST).write_text(json.dumps({**manifest, **edit}))


def corrupt_data(directory: Path) -> None:
    data = next(directory.glob("snapshot-*.safetensors"))
    raw = bytearray(data.read_bytes())
    raw[-7] ^= 0xFF
    data.write_bytes(bytes(raw))


CORRUPTIONS = {
    "flipped data byte": corrupt_data,
    "truncated manifest": lambda d: (d / MANIFEST).write_text((d / MANIFEST).read_text()[:50]),
    "manifest not an object": lambda d: (d / MANIFEST).write_text("[1, 2]"),
    "older format version": lambda d: write_manifest(d, {"format_version": 0}),
    "missing data file": lambda d: next(d.glob("snapshot-*.safetensors")).unlink(),
    "data file outside the directory": lambda d: write_manifest(d, {"data_file": "../elsewhere.safetensors"}),
    "block count differs": lambda d: write_manifest(d, {"num_blocks": 2}),
    "other backend": lambda d: write_manifest(d, {"backend": "llamacpp"}),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_snapshot_is_ignored(tmp_path: Path, corruption: str, caplog: pytest.LogCaptureFixture) -> None:
    store(tmp_path).save(snapshot())
    CORRUPTIONS[corruption](tmp_path)
    with caplog.at_level(logging.INFO, logger="qwen3_api.engine"):
        assert store(tmp_path).load(100) is None
    assert len(caplog.records) == 1 and "ignoring" in caplog.records[0].getMessage()


def test_a_crash_mid_write_leaves_the_previous_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = snapshot(2)
    store(tmp_path).save(first)

    def crash(tensors: object, path: str) -> None:
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(snapshot_dir, "save_file", crash)
    with pytest.raises(OSError):
        store(tmp_path).save(snapshot(3))
    loaded = store(tmp_path).load(100)
    assert loaded is not None and loaded.hashes == first.hashes and torch.equal(loaded.kv, first.kv)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


# ---- a fresh engine takes over the blocks ------------------------------------------------------------------------
def make_engine(model_dir: Path) -> LLMEngine:
    settings = Settings(model=str(model_dir), max_model_len=512, kv_cache_memory=0.02)
    return build_llm_engine(settings, model_dir, torch.device("cpu"), torch.float32, Tokenizer(model_dir), 512)


def first_logprobs(engine: LLMEngine, request_id: str, prompt: list[int]) -> tuple[int, list[object]]:
    """(cached prompt tokens, logprobs of 4 greedy tokens with their top 5)."""
    engine.add_request(request_id, prompt, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True, logprobs=5))
    cached, logprobs = -1, []
    while engine.has_unfinished_requests():
        for out in engine.step():
            cached = out.num_cached_tokens
            logprobs.extend(out.new_logprobs or [])
    return cached, logprobs


def test_restored_blocks_are_bit_identical_and_hit(tmp_path: Path) -> None:
    model_dir = cached_test_model("tiny", init_std=0.5)
    rng = random.Random(3)
    prefix = [rng.randrange(0, 151000) for _ in range(70)]
    first = make_engine(model_dir)
    cached_cold, _ = first_logprobs(first, "cold", [*prefix, 5, 6])
    cached_warm, warm = first_logprobs(first, "warm", [*prefix, 5, 6])
    assert (cached_cold, cached_warm) == (0, 64)
    exported = first.export_prefix_cache(1000)
    runner = first.runner
    fmt = PrefixCacheFormat("tiny", "float32", "none", 16, runner.block_shape)  # type: ignore[attr-defined]
    PrefixStore(tmp_path, 2**30, fmt, 1).save(exported)

    restarted = make_engine(model_dir)
    loaded = PrefixStore(tmp_path, 2**30, fmt, 1).load(restarted.num_kv_blocks)
    assert loaded is not None and restarted.import_prefix_cache(loaded) == len(exported) > 0
    # the K/V computed by the first engine, bit for bit, now in the new engine's blocks
    again = restarted.export_prefix_cache(1000)
    assert again.hashes == exported.hashes and torch.equal(again.kv, exported.kv)
    cached, restored = first_logprobs(restarted, "after restart", [*prefix, 5, 6])
    assert cached == 64 and restored == warm  # the same logits as the first engine's own prefix hit
