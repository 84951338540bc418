"""The llama.cpp prefix cache on disk: retained sequences through llama.cpp's sequence state into a fresh engine,
in both KV layouts, and what is refused."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import random
from pathlib import Path

import pytest

from qwen3_api.config import Settings
from qwen3_api.demo_models.checkpoints import cached_test_model
from qwen3_api.engine.llm_engine import LLMEngine
from qwen3_api.engine.prefix_store import PrefixPersistence
from qwen3_api.engine.sampling import SamplingParams
from qwen3_api.engine.sequence_store import LlamaCppPrefixCache, SequenceCacheFormat, SequenceStore
from qwen3_api.engine.snapshot_dir import MANIFEST
from qwen3_api.engine.tokenizer import Tokenizer

pytest.importorskip("llama_cpp")
from qwen3_api.executors.llamacpp_runner import LlamaCppModelRunner  # noqa: E402
from qwen3_api.runtime.llamacpp_engine import build_llamacpp_engine  # noqa: E402

MAX_MODEL_LEN = 512
MODEL = dict(shape="tiny", init_std=0.5)


@functools.cache
def gguf() -> Path:
    from qwen3_api.demo_models.gguf import cached_test_gguf

    return Path(cached_test_gguf("Q8_0", **MODEL))  # type: ignore[arg-type]


@functools.cache
def tokenizer() -> Tokenizer:
    return Tokenizer(cached_test_model(**MODEL))  # type: ignore[arg-type]


def make_engine(unified: bool) -> LLMEngine:
    settings = Settings(model="unused", max_num_seqs=4, max_num_batched_tokens=256, llamacpp_kv_unified=unified)
    return build_llamacpp_engine(settings, gguf(), tokenizer(), MAX_MODEL_LEN, kv_cells=4 * MAX_MODEL_LEN)


def runner_of(engine: LLMEngine) -> LlamaCppModelRunner:
    assert isinstance(engine.runner, LlamaCppModelRunner)
    return engine.runner


def fmt_of(engine: LLMEngine, **changes: object) -> SequenceCacheFormat:
    runner = runner_of(engine)
    fmt = SequenceCacheFormat("tiny-q8", "f16", runner.kv_unified, runner.flash_attention, runner.n_ctx_seq, "q8")
    return dataclasses.replace(fmt, **changes)  # type: ignore[arg-type]


def store_of(directory: Path, engine: LLMEngine, max_bytes: int = 2**30, **changes: object) -> SequenceStore:
    return SequenceStore(directory, max_bytes, fmt_of(engine, **changes))


def generate(engine: LLMEngine, request_id: str, prompt: list[int]) -> tuple[int, list[object]]:
    """(cached prompt tokens, logprobs of 4 greedy tokens with their top 5)."""
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True, logprobs=5)
    engine.add_request(request_id, prompt, params)
    cached, logprobs = -1, []
    while engine.has_unfinished_requests():
        for out in engine.step():
            cached = out.num_cached_tokens
            logprobs.extend(out.new_logprobs or [])
    return cached, logprobs


def prompts() -> tuple[list[int], list[int], list[int]]:
    rng = random.Random(7)
    prefix = [rng.randrange(0, 151000) for _ in range(120)]
    return prefix, [*prefix, 11, 12, 13], [*prefix, 21, 22]


@pytest.mark.parametrize("unified", [True, False], ids=["shared pool", "per-sequence"])
def test_restored_sequences_are_hit_with_the_same_logits(tmp_path: Path, unified: bool) -> None:
    prefix, first_prompt, second_prompt = prompts()
    before = make_engine(unified)
    store = store_of(tmp_path, before)
    persistence = PrefixPersistence(LlamaCppPrefixCache(runner_of(before), store), store, interval_s=3600)
    assert generate(before, "a", first_prompt)[0] == 0
    assert generate(before, "b", second_prompt)[0] == len(prefix)  # a prefix hit on the retained sequence
    cached_before, hit_before = generate(before, "b again", second_prompt)  # all but the last token cached
    assert cached_before == len(second_prompt) - 1
    persistence.save_now()  # what graceful shutdown does
    assert (tmp_path / MANIFEST).is_file()
    runner_of(before).close()

    after = make_engine(unified)
    PrefixPersistence(LlamaCppPrefixCache(runner_of(after), store), store, interval_s=3600).restore()
    assert runner_of(after).num_retained_slots == 1
    cached_after, hit_after = generate(after, "b again", second_prompt)  # the first request after the restart
    assert cached_after == cached_before
    # the cells read back from disk sit where they sat before: the same prefix hit, bit for bit
    assert hit_after == hit_before

    cold = make_engine(unified)  # the same prompt computed from nothing
    cached_cold, logprobs_cold = generate(cold, "cold", second_prompt)
    assert cached_cold == 0
    if not unified:
        # per-sequence cells without flash attention: a prefix hit equals computing the whole prompt
        assert hit_after == logprobs_cold
    else:
        # the shared pool runs flash attention, whose sums depend on the batch's shape: a prefix hit (on disk or
        # not) computes 1 token where the cold request computes 122, so the values differ slightly
        assert [step.token_id for step in hit_after] == [step.token_id for step in logprobs_cold]  # type: ignore[attr-defined]
    for engine in (after, cold):
        runner_of(engine).close()


def saved_directory(tmp_path: Path) -> tuple[Path, LLMEngine]:
    engine = make_engine(True)
    prefix, first_prompt, _ = prompts()
    generate(engine, "a", first_prompt)
    store = store_of(tmp_path, engine)
    store.save(runner_of(engine).export_retained(store.max_bytes))
    return tmp_path, engine


MISMATCHES = {
    "other model": dict(model_identity="another-model"),
    "other KV cell type": dict(kv_cache_dtype="q8_0"),
    "other KV layout": dict(kv_unified=False),
    "other flash attention": dict(flash_attention=False),
    "other context per sequence": dict(n_ctx_seq=1024),
}


def corrupt_data(directory: Path) -> None:
    data = next(directory.glob("snapshot-*.safetensors"))
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))


def edit_manifest(directory: Path, **edit: object) -> None:
    manifest = json.loads((directory / MANIFEST).read_text())
    (directory / MANIFEST).write_text(json.dumps({**manifest, **edit}))


CORRUPTIONS = {
    "flipped data byte": corrupt_data,
    "truncated data": lambda d: next(d.glob("snapshot-*.safetensors")).write_bytes(b"\0" * 64),
    "manifest not JSON": lambda d: (d / MANIFEST).write_text("{not json"),
    "torch manifest": lambda d: edit_manifest(d, backend="torch"),
    "sequence count differs": lambda d: edit_manifest(d, num_sequences=3),
}


@pytest.mark.parametrize("case", [*MISMATCHES, *CORRUPTIONS])
def test_mismatched_or_corrupt_snapshots_are_ignored_with_one_line(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    directory, engine = saved_directory(tmp_path)
    if case in CORRUPTIONS:
        CORRUPTIONS[case](directory)
    store = store_of(directory, engine, **MISMATCHES.get(case, {}))
    fresh = make_engine(True)
    with caplog.at_level(logging.INFO, logger="qwen3_api.engine"):
        PrefixPersistence(LlamaCppPrefixCache(runner_of(fresh), store), store, interval_s=3600).restore()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "ignoring the snapshot" in lines[0], lines
    assert runner_of(fresh).num_retained_slots == 0  # nothing loaded
    _, first_prompt, _ = prompts()
    assert generate(fresh, "x", first_prompt)[0] == 0
    for e in (engine, fresh):
        runner_of(e).close()


def test_a_write_cut_short_leaves_the_previous_snapshot_and_the_budget_holds(tmp_path: Path) -> None:
    directory, engine = saved_directory(tmp_path)
    store = store_of(directory, engine)
    state_bytes = runner_of(engine).export_retained(store.max_bytes).states.numel()
    # a crash mid-write: a half-written temporary data file and manifest are left behind
    (directory / ".snapshot-dead.safetensors.123.tmp").write_bytes(b"x" * 1000)
    (directory / ".manifest.json.456.tmp").write_text('{"half":')
    fresh = make_engine(True)
    PrefixPersistence(LlamaCppPrefixCache(runner_of(fresh), store), store, interval_s=3600).restore()
    assert runner_of(fresh).num_retained_slots == 1
    _, first_prompt, _ = prompts()
    assert generate(fresh, "again", first_prompt)[0] == len(first_prompt) - 1

    # a budget short of both sequences per snapshot: the hottest is kept, the directory stays within budget
    generate(fresh, "other", [5] * 60)  # half as long as the restored one, finished last
    assert runner_of(fresh).num_retained_slots == 2
    tight = store_of(directory, engine, max_bytes=2 * (int(1.2 * state_bytes) + 20 * 2**10))
    snapshot = runner_of(fresh).export_retained(tight.max_bytes)
    assert len(snapshot) == 1 and snapshot.tokens[0][:60] == [5] * 60  # the most recently finished one
    tight.save(snapshot)
    assert not list(directory.glob(".*.tmp"))  # leftovers of the cut-short write are gone
    assert tight.files.disk_bytes() <= tight.files.max_bytes
    for e in (engine, fresh):
        runner_of(e).close()


def test_conversations_in_the_host_cache_go_to_disk_and_come_back_there(tmp_path: Path) -> None:
    """One sequence: the first conversation is in host memory when the snapshot is taken, the second in the
    sequence. A fresh engine gets the second back into its sequence, the first into its host cache, and the
    first one's next turn is a prefix hit with the logprobs of computing it cold."""
    settings = Settings(model="unused", max_num_seqs=1, max_num_batched_tokens=256, llamacpp_kv_unified=False,
                        llamacpp_host_cache_memory=1.0)  # fmt: skip

    def one_sequence() -> LLMEngine:
        return build_llamacpp_engine(settings, gguf(), tokenizer(), MAX_MODEL_LEN)

    prefix, first_prompt, _ = prompts()
    other = [5000 + i for i in range(80)]
    before = one_sequence()
    generate(before, "a", first_prompt)
    generate(before, "b", other)  # "a" moves to host memory
    assert len(runner_of(before).host_cache) == 1
    store = store_of(tmp_path, before)
    store.save(runner_of(before).export_retained(store.max_bytes))
    runner_of(before).close()

    after = one_sequence()
    snapshot = store.load()
    assert snapshot is not None and len(snapshot) == 2
    # each holds its prompt and 3 of its 4 output tokens (the last one was never decoded)
    assert runner_of(after).restore_retained(snapshot) == (2, len(first_prompt) + len(other) + 2 * 3)
    assert runner_of(after).num_retained_slots == 1 and len(runner_of(after).host_cache) == 1
    next_turn = [*first_prompt, 31, 32]
    cached, logprobs = generate(after, "a2", next_turn)
    assert cached == len(first_prompt)
    cold = build_llamacpp_engine(settings.model_copy(update={"enable_prefix_caching": False}), gguf(), tokenizer(),
                                 MAX_MODEL_LEN)  # fmt: skip
    assert generate(cold, "cold", next_turn) == (0, logprobs)
    for engine in (after, cold):
        runner_of(engine).close()


def test_a_restore_counts_only_the_saved_conversations_the_host_cache_kept(tmp_path: Path) -> None:
    settings = Settings(model="unused", max_num_seqs=1, max_num_batched_tokens=256, llamacpp_kv_unified=False,
                        llamacpp_host_cache_memory=1.0)  # fmt: skip
    before = build_llamacpp_engine(settings, gguf(), tokenizer(), MAX_MODEL_LEN)
    for i in range(3):  # each conversation takes the one sequence: the previous one goes to host memory
        generate(before, f"c{i}", [1000 * (i + 1) + t for t in range(60 + 10 * i)])
    snapshot = runner_of(before).export_retained(2**30)
    runner_of(before).close()
    assert len(snapshot) == 3  # the sequence's conversation, then the host cache's, most recent first
    sizes = [end - begin for begin, end in zip(snapshot.offsets, snapshot.offsets[1:])]
    after = build_llamacpp_engine(settings, gguf(), tokenizer(), MAX_MODEL_LEN, host_cache_bytes=max(sizes[1:]))
    # c2 goes into the sequence; c0 and then c1 into a host cache with room for one: c1 stays
    assert runner_of(after).restore_retained(snapshot) == (2, len(snapshot.tokens[0]) + len(snapshot.tokens[1]))
    assert len(runner_of(after).host_cache) == 1
    runner_of(after).close()
