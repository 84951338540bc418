"""The llama.cpp runner against HF transformers float32 on GGUF copies of the random-weight test models: logits,
greedy parity by teacher forcing (F32 and Q8_0), batch invariance, slot reuse, preemption and chunked prefill."""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from qwen3_api.config import Settings
from qwen3_api.demo_models.checkpoints import cached_test_model
from qwen3_api.engine.kv_cache import KVCacheManager
from qwen3_api.engine.llm_engine import LLMEngine
from qwen3_api.engine.outputs import FinishReason
from qwen3_api.engine.protocols import BatchEntry
from qwen3_api.engine.sampling import SamplingParams
from qwen3_api.engine.scheduler import Scheduler, SchedulerConfig
from qwen3_api.engine.sequence import Sequence
from qwen3_api.engine.tokenizer import Tokenizer
from qwen3_api.errors import EngineError
from qwen3_api.executors.sampler import Sampler

pytest.importorskip("llama_cpp")
from qwen3_api.executors.llamacpp_runner import DEFAULT_UBATCH, LlamaCppModelRunner  # noqa: E402
from qwen3_api.runtime.llamacpp_engine import build_llamacpp_engine  # noqa: E402

MODELS = {
    # A larger init std than real checkpoints gives random weights usable top-1 margins.
    "tiny": dict(shape="tiny", init_std=0.5),
    "deep": dict(shape="0.6b", num_layers=4, init_std=0.05),
}
MAX_MODEL_LEN = 512


@pytest.fixture(scope="module", params=list(MODELS))
def model_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@functools.cache
def model_dir_of(name: str) -> Path:
    return cached_test_model(**MODELS[name])  # type: ignore[arg-type]


@functools.cache
def gguf_of(name: str, qtype: str) -> Path:
    from qwen3_api.demo_models.gguf import cached_test_gguf

    return Path(cached_test_gguf(qtype, **MODELS[name]))  # type: ignore[arg-type]


@functools.cache
def tokenizer_of(name: str) -> Tokenizer:
    return Tokenizer(model_dir_of(name))


@pytest.fixture(scope="module")
def hf_model(model_name: str):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir_of(model_name)), dtype=torch.float32).eval()


@pytest.fixture
def runner(model_name: str) -> Iterator[LlamaCppModelRunner]:
    runner = LlamaCppModelRunner(gguf_of(model_name, "Q8_0"), max_num_seqs=4, max_model_len=MAX_MODEL_LEN, n_batch=128)
    yield runner
    runner.close()


def make_engine(name: str, qtype: str = "Q8_0", *, kv_cache_type: str = "f16", **overrides: object) -> LLMEngine:
    """The served engine (flash attention on), with per-sequence KV unless `llamacpp_kv_unified=True` is passed:
    the exactness tests below hold bit for bit there."""
    defaults = {"max_num_seqs": 8, "max_num_batched_tokens": 512, "llamacpp_kv_unified": False}
    settings = Settings(model="unused", **{**defaults, **overrides})  # type: ignore[arg-type]
    return build_llamacpp_engine(
        settings, gguf_of(name, qtype), tokenizer_of(name), MAX_MODEL_LEN, kv_cache_type=kv_cache_type
    )


def run(engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]]) -> dict[str, list[int]]:
    """Submit all requests, step until done; return each request's output tokens."""
    for request_id, (prompt, params) in requests.items():
        engine.add_request(request_id, prompt, params)
    tokens: dict[str, list[int]] = {request_id: [] for request_id in requests}
    finished = set()
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens[out.request_id].extend(out.new_token_ids)
            if out.finish_reason is not None:
                finished.add(out.request_id)
    assert finished == set(requests)
    runner = engine.runner
    assert isinstance(runner, LlamaCppModelRunner) and runner.num_free_slots == runner.num_slots
    return tokens


def prompts(count: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    lengths = [1, 5, 17, 31, 64, 100, 3, 48, 250, 9, 77, 16][:count]
    return [[rng.randrange(0, 151000) for _ in range(n)] for n in lengths]


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)


def hf_logits(hf_model, tokens: list[int]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.inference_mode():
        return hf_model(torch.tensor([tokens])).logits[0].float()  # [T, V]


def teacher_forced_gaps(hf_model, prompt: list[int], output: list[int]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Per step: HF's max logit minus HF's logit of the token we chose (0 where we chose HF's argmax)."""
    logits = hf_logits(hf_model, prompt + output)[len(prompt) - 1 : -1]  # [out, V]
    return logits.max(dim=-1).values - logits[torch.arange(len(output)), torch.tensor(output)]


def test_f32_logits_match_hf(model_name: str, hf_model) -> None:  # type: ignore[no-untyped-def]
    prompt = prompts(6, seed=10)[5]  # 100 tokens
    reference = hf_logits(hf_model, prompt)
    for kv_cache_type, tolerance in (("f32", 1e-3), ("f16", 0.1)):  # measured max diffs: ~2e-5, ~0.02
        runner = LlamaCppModelRunner(
            gguf_of(model_name, "F32"), max_num_seqs=2, max_model_len=MAX_MODEL_LEN, kv_cache_type=kv_cache_type
        )
        try:
            # Prefill in two entries of one batch plus a continuation, checking three positions.
            first = runner.forward(
                [BatchEntry(prompt[:60], 0, [], True, "a"), BatchEntry(prompt[:7], 0, [], True, "b")]
            )
            rest = runner.forward([BatchEntry(prompt[60:], 60, [], True, "a")])
        finally:
            runner.close()
        assert first.shape == (2, 151936) and first.dtype == torch.float32
        for ours, position in ((first[0], 59), (first[1], 6), (rest[0], 99)):
            diff = float((ours - reference[position]).abs().max())
            assert diff <= tolerance, f"KV {kv_cache_type} position {position}: max abs diff {diff:.3g}"


def test_f32_greedy_parity_with_hf_by_teacher_forcing(model_name: str, hf_model) -> None:  # type: ignore[no-untyped-def]
    batch = prompts(4, seed=11)
    engine = make_engine(model_name, "F32", kv_cache_type="f32")
    outputs = run(engine, {f"r{i}": (p, greedy(32)) for i, p in enumerate(batch)})
    for i, prompt in enumerate(batch):
        gaps = teacher_forced_gaps(hf_model, prompt, outputs[f"r{i}"])
        assert len(gaps) == 32
        assert float(gaps.max()) <= 1e-3, f"r{i} step {int(gaps.argmax())}: gap {float(gaps.max()):.3g}"


# As in tests/models/test_quantization.py: random weights give nearly flat logits (median top-1/top-2 gap ~0.15
# logit std; llama.cpp's Q8_0 also quantizes activations), so top-1 agreement is required where HF has decided
# (gap > DECIDED_GAP std), and top-5 membership everywhere. Observed: 0.99-1.0 on decided steps, ~0.90 on all.
DECIDED_GAP = 0.1
MIN_TOP1_AGREEMENT = 0.95


def test_q8_0_top1_agreement_with_hf_f32(model_name: str, hf_model) -> None:  # type: ignore[no-untyped-def]
    batch = prompts(4, seed=12)
    outputs = run(make_engine(model_name, "Q8_0"), {f"r{i}": (p, greedy(32)) for i, p in enumerate(batch)})
    # Teacher forcing: HF's logits at each step of our output.
    reference = torch.cat([hf_logits(hf_model, p + outputs[f"r{i}"])[len(p) - 1 : -1] for i, p in enumerate(batch)])
    chosen = torch.tensor([t for i in range(len(batch)) for t in outputs[f"r{i}"]])
    top2 = reference.topk(2, dim=-1).values
    decided = (top2[:, 0] - top2[:, 1]) > DECIDED_GAP * reference.std(dim=-1)
    assert decided.sum() >= len(reference) // 2
    agreement = float((reference.argmax(-1) == chosen)[decided].float().mean())
    assert agreement >= MIN_TOP1_AGREEMENT, f"top-1 agreement {agreement:.1%} on {int(decided.sum())} decided steps"
    assert (reference.topk(5, dim=-1).indices == chosen[:, None]).any(dim=-1).all()


def run_alone(engine: LLMEngine, batch: list[list[int]], params: SamplingParams) -> dict[str, list[int]]:
    return {f"r{i}": run(engine, {f"r{i}": (p, params)})[f"r{i}"] for i, p in enumerate(batch)}


def test_batch_invariance_8_concurrent_mixed_lengths(model_name: str) -> None:
    batch = prompts(8, seed=13)
    alone = run_alone(make_engine(model_name), batch, greedy(16))
    together = run(make_engine(model_name), {f"r{i}": (p, greedy(16)) for i, p in enumerate(batch)})
    assert together == alone


def test_chunked_prefill_equals_one_shot(model_name: str) -> None:
    prompt = prompts(9, seed=14)[8]  # 250 tokens: 8 steps of a 32-token budget
    one_shot = run(make_engine(model_name), {"a": (prompt, greedy(12))})
    engine = make_engine(model_name, max_num_seqs=2, max_num_batched_tokens=32)
    chunked = run(engine, {"a": (prompt, greedy(12))})
    assert chunked == one_shot
    assert engine.num_steps >= 8 + 11


def test_a_step_past_one_ubatch_prefills_at_once_and_matches_each_request_alone(model_name: str) -> None:
    engine = make_engine(model_name, max_num_seqs=12, max_num_batched_tokens=2048)
    assert (engine.runner.n_batch, engine.runner.n_ubatch) == (2048, DEFAULT_UBATCH)
    batch = prompts(12, seed=16)
    assert 512 < sum(map(len, batch)) <= 2048
    together = run(engine, {f"r{i}": (p, greedy(16)) for i, p in enumerate(batch)})
    assert engine.num_steps == 16  # every prompt in the first step (several ubatches), then 15 decodes
    assert together == run_alone(make_engine(model_name), batch, greedy(16))


def test_physical_batch_is_never_more_than_the_logical_one(runner: LlamaCppModelRunner) -> None:
    assert (runner.n_batch, runner.n_ubatch) == (128, 128)  # n_batch=128 < DEFAULT_UBATCH


def test_batch_longer_than_n_batch_is_split(model_name: str) -> None:
    entries = [BatchEntry(p, 0, [], True, f"r{i}") for i, p in enumerate(prompts(9, seed=15)[5:9])]  # 100+3+48+250
    small = LlamaCppModelRunner(gguf_of(model_name, "Q8_0"), max_num_seqs=4, max_model_len=MAX_MODEL_LEN, n_batch=64)
    large = LlamaCppModelRunner(gguf_of(model_name, "Q8_0"), max_num_seqs=4, max_model_len=MAX_MODEL_LEN, n_batch=512)
    try:
        assert torch.equal(small.forward(entries), large.forward(entries))
    finally:
        small.close()
        large.close()


def test_released_slot_is_reused_and_starts_clean(runner: LlamaCppModelRunner) -> None:
    a, b = prompts(6, seed=16)[4:6]
    fresh = runner.forward([BatchEntry(b, 0, [], True, "b")])
    runner.release(["b"])
    runner.forward([BatchEntry(a, 0, [], True, "a")])
    slot = runner.slot_of("a")
    runner.release(["a"])
    assert runner.num_free_slots == 4 and runner.slot_of("a") is None
    # The next request gets a's sequence id back; none of a's cells may leak into it.
    again = runner.forward([BatchEntry(b, 0, [], True, "b2")])
    assert runner.slot_of("b2") == slot
    assert torch.equal(again, fresh)


def test_entries_out_of_sequence_order_get_their_own_rows_back_in_batch_order(model_name: str) -> None:
    """Per-sequence KV hands llama.cpp the tokens sorted by sequence id; the rows come back in batch order."""
    a, b, c = prompts(6, seed=18)[3:6]
    runners = [LlamaCppModelRunner(gguf_of(model_name, "Q8_0"), max_num_seqs=4, max_model_len=MAX_MODEL_LEN)
               for _ in range(2)]  # fmt: skip
    try:
        for each in runners:
            each.forward([BatchEntry(p, 0, [], True, name) for name, p in (("a", a), ("b", b), ("c", c))])
        in_order, reversed_ = runners
        assert [in_order.slot_of(name) for name in "abc"] == [0, 1, 2]
        step = {"a": BatchEntry([7, 8], len(a), [], True, "a"), "b": BatchEntry([9], len(b), [], False, "b"),
                "c": BatchEntry([5, 6, 4], len(c), [], True, "c", num_draft_tokens=2)}  # fmt: skip
        expected = in_order.forward([step["a"], step["b"], step["c"]])  # rows: a, then c's 3
        got = reversed_.forward([step["c"], step["b"], step["a"]])  # rows: c's 3, then a
        assert got.shape == expected.shape == (4, in_order.vocab_size)
        assert torch.equal(got[:3], expected[1:]) and torch.equal(got[3], expected[0])
    finally:
        for each in runners:
            each.close()


def test_restart_from_position_0_recomputes(runner: LlamaCppModelRunner) -> None:
    prompt = prompts(6, seed=17)[5]
    first = runner.forward([BatchEntry(prompt, 0, [], True, "p")])
    runner.forward([BatchEntry([42], len(prompt), [], True, "p")])
    # Preempted by recompute: the same request comes back at position 0 with its prompt.
    again = runner.forward([BatchEntry(prompt, 0, [], True, "p")])
    assert torch.equal(again, first)


def test_a_gap_in_positions_is_rejected(runner: LlamaCppModelRunner) -> None:
    runner.forward([BatchEntry([1, 2, 3], 0, [], True, "g")])
    with pytest.raises(ValueError, match="only 3 positions"):
        runner.forward([BatchEntry([4], 5, [], True, "g")])


def test_more_logits_rows_than_the_context_reserved_are_refused_before_llama_cpp_aborts(model_name: str) -> None:
    # No drafts reserved: one row per sequence. llama.cpp itself would abort the process on the 4-row batch.
    lone = LlamaCppModelRunner(gguf_of(model_name, "Q8_0"), max_num_seqs=1, max_model_len=MAX_MODEL_LEN)
    try:
        first = lone.forward([BatchEntry([1, 2, 3], 0, [], True, "d")])
        with pytest.raises(ValueError, match="4 logits rows, more than the 1 this context reserved"):
            lone.forward([BatchEntry([4, 5, 6, 7], 3, [], True, "d", num_draft_tokens=3)])
        again = lone.forward([BatchEntry([1, 2, 3], 0, [], True, "d")])  # nothing reached llama.cpp: still usable
        assert torch.equal(again, first)
    finally:
        lone.close()


def test_more_requests_than_sequences_is_an_engine_error(runner: LlamaCppModelRunner) -> None:
    runner.forward([BatchEntry([1], 0, [], True, f"s{i}") for i in range(4)])
    with pytest.raises(EngineError, match="only 0 free llama.cpp sequences"):
        runner.forward([BatchEntry([1], 0, [], True, "s4")])


@pytest.mark.parametrize("reuse", [False, True], ids=["recompute", "reuse-own-cells"])
def test_preempted_engine_requests_equal_uninterrupted(model_name: str, reuse: bool) -> None:
    batch = prompts(6, seed=18)
    reference = run_alone(make_engine(model_name), batch, greedy(24))
    # The llama.cpp engine never runs short of blocks; a KV manager this small makes the scheduler preempt. A
    # preempted request gives its sequence id back; with prefix reuse it finds its own cells again when readmitted.
    # The reference engine's shape (8 sequences' cells, its step batch): per-sequence logits are bit-identical
    # only between runners with the same cells per sequence.
    runner = LlamaCppModelRunner(
        gguf_of(model_name, "Q8_0"), max_num_seqs=8, max_model_len=MAX_MODEL_LEN, reuse_prefixes=reuse
    )
    config = SchedulerConfig(
        max_num_seqs=6, max_num_batched_tokens=512, block_size=16, max_model_len=192, eos_token_ids=()
    )

    def own_cells(seq: Sequence) -> int:
        return runner.lookup_prefix(seq.request_id, seq.all_token_ids)

    kv = KVCacheManager(12, 16, enable_prefix_caching=False, prefix_source=own_cells if reuse else None)
    engine = LLMEngine(Scheduler(config, kv), runner, Sampler())
    outputs = run(engine, {f"r{i}": (p, greedy(24)) for i, p in enumerate(batch)})
    assert engine.scheduler.num_preemptions > 0
    if model_name == "deep" and not reuse and outputs != reference:
        # Seen on an AVX-512/AMX VM with weight repacking off: recomputing a 4-layer model's prompt + output in
        # one batched prefill rounds differently from the token-by-token decode it replaces, and a greedy near-tie
        # flips. llama.cpp's kernels, not our bookkeeping (the tiny model and the own-cells reuse hold exactly).
        pytest.xfail("llama.cpp's batched prefill and single-token decode round differently on this CPU")
    assert outputs == reference
    # Finding its own cells again is not a prefix hit (issue 12: a preempted sequence's recomputation never counts).
    assert kv.stats.prefix_hit_tokens == 0


def test_abort_frees_slots_and_cells(model_name: str) -> None:
    engine = make_engine(model_name)
    for i, p in enumerate(prompts(4, seed=19)):
        engine.add_request(f"r{i}", p, greedy(50))
    for _ in range(3):
        engine.step()
    runner = engine.runner
    assert isinstance(runner, LlamaCppModelRunner) and runner.num_free_slots == 8 - 4
    for i in range(4):
        engine.abort_request(f"r{i}")
    assert runner.num_free_slots == 8 and not engine.has_unfinished_requests()
    # A request after the aborts gives what it gives on a fresh engine.
    prompt = prompts(6, seed=20)[5]
    assert run(engine, {"x": (prompt, greedy(8))}) == run(make_engine(model_name), {"x": (prompt, greedy(8))})


def test_end_token_stops(model_name: str) -> None:
    prompt = prompts(4, seed=21)[3]
    free = run(make_engine(model_name), {"a": (prompt, greedy(12))})["a"]
    engine = make_engine(model_name)
    engine.add_request("a", prompt, SamplingParams(max_tokens=12, temperature=0, stop_token_ids=(free[4],)))
    tokens, finish = [], None
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens += out.new_token_ids
            finish = out.finish_reason or finish
    assert tokens == free[: free.index(free[4]) + 1] and finish is FinishReason.STOP


# -- prefix reuse: a cached prefix taken over or copied gives the logits of computing it ------------------------


def cold_and_warm_runners(model_name: str, max_num_seqs: int) -> tuple[LlamaCppModelRunner, LlamaCppModelRunner]:
    """Two runners on one file: without prefix reuse, and with it (low thresholds for short test prompts)."""
    path = gguf_of(model_name, "Q8_0")
    cold = LlamaCppModelRunner(path, max_num_seqs=max_num_seqs, max_model_len=MAX_MODEL_LEN)
    warm = LlamaCppModelRunner(
        path, max_num_seqs=max_num_seqs, max_model_len=MAX_MODEL_LEN, reuse_prefixes=True, min_reuse_tokens=16,
        min_copy_tokens=32,
    )
    return cold, warm


def test_taken_over_and_copied_prefixes_give_cold_logits(model_name: str) -> None:
    base = prompts(6, seed=30)[5]  # 100 tokens
    copy_prompt, takeover_prompt = base[:90] + [11, 12], base[:80] + [7, 8, 9]
    cold, warm = cold_and_warm_runners(model_name, max_num_seqs=4)
    try:
        expected = {
            name: (cold.forward([BatchEntry(p, 0, [], True, name)]), cold.forward([BatchEntry([5], len(p), [], True, name)]))
            for name, p in (("copy", copy_prompt), ("takeover", takeover_prompt))
        }  # fmt: skip
        warm.forward([BatchEntry(base, 0, [], True, "a")])
        source = warm.slot_of("a")
        # "a" is running: its cells are copied into a new sequence.
        hit = warm.lookup_prefix("copy", copy_prompt)
        assert hit == 90
        first = warm.forward([BatchEntry(copy_prompt[hit:], hit, [], True, "copy")])
        assert warm.slot_of("copy") != source
        # "a" finished: its sequence is kept, and a prompt sharing 80 tokens takes it over.
        warm.release(["a"])
        assert warm.num_retained_slots == 1
        hit = warm.lookup_prefix("takeover", takeover_prompt)
        assert hit == 80
        got = {"copy": first, "takeover": warm.forward([BatchEntry(takeover_prompt[hit:], hit, [], True, "takeover")])}
        assert warm.slot_of("takeover") == source
        for name, prompt in (("copy", copy_prompt), ("takeover", takeover_prompt)):
            # The next decode reads the reused cells and the new ones alike.
            step = warm.forward([BatchEntry([5], len(prompt), [], True, name)])
            assert torch.equal(got[name], expected[name][0]), name
            assert torch.equal(step, expected[name][1]), name
    finally:
        cold.close()
        warm.close()


def run_with_cache_counts(
    engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]], group: str | None = None
) -> tuple[dict[str, list[int]], dict[str, int]]:
    """Like `run`, also returning each request's prompt tokens served from a cache."""
    for request_id, (prompt, params) in requests.items():
        engine.add_request(request_id, prompt, params, prefix_group=group)
    tokens: dict[str, list[int]] = {request_id: [] for request_id in requests}
    cached: dict[str, int] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens[out.request_id].extend(out.new_token_ids)
            cached[out.request_id] = out.num_cached_tokens
    return tokens, cached


def test_engine_reuses_a_finished_conversation_and_running_siblings(model_name: str) -> None:
    base = prompts(6, seed=31)[5]
    turn2 = base + [101, 102, 103, 104]
    cold = make_engine(model_name, enable_prefix_caching=False)
    expected_turn2 = run(cold, {"t2": (turn2, greedy(8))})["t2"]
    expected_sibling = run(cold, {"s": (base, greedy(8))})["s"]
    engine = make_engine(model_name)
    run(engine, {"t1": (base, greedy(8))})
    tokens, cached = run_with_cache_counts(engine, {"t2": (turn2, greedy(8))})
    assert cached["t2"] >= len(base) and tokens["t2"] == expected_turn2
    # n siblings of one prompt: one computes it, the others copy its cells (its prompt is >= 64 tokens).
    tokens, cached = run_with_cache_counts(engine, {f"s{i}": (base, greedy(8)) for i in range(3)}, group="g")
    assert all(t == expected_sibling for t in tokens.values())
    assert sorted(cached.values())[-2:] == [len(base) - 1] * 2
    assert engine.scheduler.kv_stats.prefix_hit_tokens > 0


def test_a_plan_that_fails_midway_leaves_no_sequence_promising_cells_it_does_not_hold(model_name: str) -> None:
    base = prompts(6, seed=30)[5]  # 100 tokens
    copy_prompt = base[:90] + [11, 12]
    cold, warm = cold_and_warm_runners(model_name, max_num_seqs=4)
    try:
        expected = cold.forward([BatchEntry(copy_prompt, 0, [], True, "e")])
        warm.forward([BatchEntry(base, 0, [], True, "a")])
        assert warm.lookup_prefix("copy", copy_prompt) == 90  # promised: "a"'s cells copied into a new sequence
        run = warm._ops.run

        def copy_fails(op: Any, *args: Any) -> None:  # llama.cpp failing inside the step's plan
            if op.kind == "copy":
                raise RuntimeError("injected: the copy failed")
            run(op, *args)

        warm._ops.run = copy_fails  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="injected"):
            warm.forward([BatchEntry(copy_prompt[90:], 90, [], True, "copy")])
        warm._ops.run = run  # type: ignore[method-assign]
        failed = warm._pool.slot_of("copy")
        assert failed is None or failed.num_cached == 0  # it promised 90 tokens it never got
        warm.release(["copy"])  # the engine ends the failed step's requests
        # The next such prompt must not take over the failed sequence as if it held "a"'s prefix.
        hit = warm.lookup_prefix("again", copy_prompt)
        assert hit == 90
        got = warm.forward([BatchEntry(copy_prompt[hit:], hit, [], True, "again")])
        assert torch.equal(got, expected)
    finally:
        cold.close()
        warm.close()


def test_copy_and_takeover_of_one_retained_sequence_in_one_batch(model_name: str) -> None:
    base = prompts(6, seed=32)[5]  # 100 tokens
    others = prompts(4, seed=33)[2:4]  # 17 and 31 tokens
    takeover_prompt, copy_prompt = base[:90] + [3, 4], base[:80] + [5, 6]
    cold, warm = cold_and_warm_runners(model_name, max_num_seqs=3)
    try:
        expected = [cold.forward([BatchEntry(p, 0, [], True, f"e{i}")]) for i, p in enumerate((takeover_prompt, copy_prompt))]
        # Fill all three sequences and finish them: "a" (the shared prefix) is the least recently released.
        for request_id, prompt in (("a", base), ("b", others[0]), ("c", others[1])):
            warm.forward([BatchEntry(prompt, 0, [], True, request_id)])
        source = warm.slot_of("a")
        warm.release(["a", "b", "c"])
        assert warm.lookup_prefix("t", takeover_prompt) == 90
        assert warm.lookup_prefix("k", copy_prompt) == 80
        # One batch: "k" copies "a"'s cells into "b"'s evicted sequence, then "t" takes "a" over.
        got = warm.forward([BatchEntry(takeover_prompt[90:], 90, [], True, "t"), BatchEntry(copy_prompt[80:], 80, [], True, "k")])
        assert warm.slot_of("t") == source and warm.slot_of("k") not in (source, None)
        assert torch.equal(got[0], expected[0][0]) and torch.equal(got[1], expected[1][0])
    finally:
        cold.close()
        warm.close()


# -- the host-memory cache: a conversation whose sequence another request took is restored, not recomputed -----


def test_a_saved_conversation_is_restored_into_its_next_turn_with_cold_logits(model_name: str) -> None:
    base, other = prompts(6, seed=34)[5], prompts(5, seed=35)[4]  # 100 and 64 tokens
    turn2 = base + [21, 22, 23]
    path = gguf_of(model_name, "Q8_0")
    cold = LlamaCppModelRunner(path, max_num_seqs=1, max_model_len=MAX_MODEL_LEN)
    warm = LlamaCppModelRunner(path, max_num_seqs=1, max_model_len=MAX_MODEL_LEN, reuse_prefixes=True,
                               host_cache_bytes=2**30)  # fmt: skip
    try:
        expected = (cold.forward([BatchEntry(turn2, 0, [], True, "c")]),
                    cold.forward([BatchEntry([5], len(turn2), [], True, "c")]))  # fmt: skip
        warm.forward([BatchEntry(base, 0, [], True, "a")])
        warm.release(["a"])
        warm.forward([BatchEntry(other, 0, [], True, "b")])  # takes the one sequence: "a" goes to host memory
        assert len(warm.host_cache) == 1 and warm.host_cache.num_bytes > 0
        warm.release(["b"])
        hit = warm.lookup_prefix("a2", turn2)
        assert hit == len(base)
        got = warm.forward([BatchEntry(turn2[hit:], hit, [], True, "a2")])
        step = warm.forward([BatchEntry([5], len(turn2), [], True, "a2")])
        assert warm.host_cache.num_restored == 1 and len(warm.host_cache) == 2  # "b" was saved in its turn
        assert torch.equal(got, expected[0]) and torch.equal(step, expected[1])
    finally:
        cold.close()
        warm.close()


def test_a_saved_state_llama_cpp_refuses_is_recomputed_for_the_request_it_was_promised_to() -> None:
    base, other = prompts(6, seed=36)[5], prompts(5, seed=37)[4]
    turn2 = base + [21, 22, 23]
    path = gguf_of("tiny", "Q8_0")
    cold = LlamaCppModelRunner(path, max_num_seqs=1, max_model_len=MAX_MODEL_LEN)
    warm = LlamaCppModelRunner(path, max_num_seqs=1, max_model_len=MAX_MODEL_LEN, reuse_prefixes=True,
                               host_cache_bytes=2**30)  # fmt: skip
    try:
        expected = cold.forward([BatchEntry(turn2, 0, [], True, "c")])
        warm.forward([BatchEntry(base, 0, [], True, "a")])
        warm.release(["a"])
        warm.forward([BatchEntry(other, 0, [], True, "b")])
        warm.release(["b"])
        (entry,) = warm.host_cache.entries()
        entry.state = entry.state[: entry.num_bytes // 2]  # type: ignore[index]  # as a damaged file would give
        hit = warm.lookup_prefix("a2", turn2)
        assert hit == len(base)
        got = warm.forward([BatchEntry(turn2[hit:], hit, [], True, "a2")])
        assert torch.equal(got, expected)
        assert warm.host_cache.num_restored == 0 and not warm.host_cache.holds(base)
    finally:
        cold.close()
        warm.close()


def saved_into(runner: LlamaCppModelRunner, donor: LlamaCppModelRunner, prompt: list[int]) -> None:
    """Put `prompt`'s state, computed by `donor` (a runner of the same layout), into `runner`'s host cache, as a
    snapshot read back from disk would."""
    donor.forward([BatchEntry(prompt, 0, [], True, "donor")])
    donor.release(["donor"])
    snapshot = donor.export_retained(2**31)
    runner.host_cache.put(snapshot.tokens[0], snapshot.states.clone(), snapshot.states.numel())


def test_a_restore_into_the_sequence_a_copy_reads_in_the_same_step_is_computed_instead(model_name: str) -> None:
    """Per-sequence KV, two sequences: "c" (200 tokens) is kept in one, the other is empty. In one step "a" copies
    80 tokens of "c" into the empty one and "r" is restored from host memory into "c"'s. llama.cpp copies the data
    at the next decode, so a restore written at once would be what "a" copies; the runner computes "r" instead."""
    rng = random.Random(38)
    long, saved = [rng.randrange(0, 151000) for _ in range(200)], [rng.randrange(0, 151000) for _ in range(70)]
    copy_prompt, restore_prompt = long[:80] + [1, 2], saved + [3, 4]
    path = gguf_of(model_name, "Q8_0")
    runners = [LlamaCppModelRunner(path, max_num_seqs=2, max_model_len=MAX_MODEL_LEN, reuse_prefixes=True,
                                   host_cache_bytes=2**30) for _ in range(3)]  # fmt: skip
    warm, donor, cold = runners
    try:
        expected = [cold.forward([BatchEntry(p, 0, [], True, f"e{i}")]) for i, p in enumerate((copy_prompt, restore_prompt))]
        saved_into(warm, donor, saved)
        warm.forward([BatchEntry(long, 0, [], True, "c")])
        warm.release(["c"])
        assert warm.lookup_prefix("a", copy_prompt) == 80 and warm.lookup_prefix("r", restore_prompt) == len(saved)
        got = warm.forward([BatchEntry(copy_prompt[80:], 80, [], True, "a"),
                            BatchEntry(restore_prompt[len(saved):], len(saved), [], True, "r")])  # fmt: skip
        assert warm.host_cache.num_restored == 0  # computed, not copied back
        assert torch.equal(got[0], expected[0][0]) and torch.equal(got[1], expected[1][0])
    finally:
        for runner in runners:
            runner.close()


def test_a_restore_into_a_full_shared_pool_first_evicts_retained_cells() -> None:
    """One shared pool of 1,024 cells, three sequence ids: two kept conversations hold 1,000 of them when a third
    is restored from host memory into the empty id. The kept cells make room first (the older one is saved)."""
    rng = random.Random(39)
    a, b, saved = ([rng.randrange(0, 151000) for _ in range(n)] for n in (500, 500, 300))
    path = gguf_of("tiny", "Q8_0")
    runners = [LlamaCppModelRunner(path, max_num_seqs=2, max_model_len=1024, reuse_prefixes=True, kv_unified=True,
                                   kv_cells=1024, retained_sequences=1, host_cache_bytes=2**30)
               for _ in range(3)]  # fmt: skip
    warm, donor, cold = runners
    try:
        turn = saved + [5, 6, 7]
        expected = cold.forward([BatchEntry(turn, 0, [], True, "cold")])
        saved_into(warm, donor, saved)
        for request_id, prompt in (("a", a), ("b", b)):
            warm.forward([BatchEntry(prompt, 0, [], True, request_id)])
        warm.release(["a", "b"])
        assert warm.lookup_prefix("r", turn) == len(saved)
        got = warm.forward([BatchEntry(turn[len(saved):], len(saved), [], True, "r")])
        assert warm.host_cache.num_restored == 1 and warm.num_retained_slots == 1 and warm.host_cache.holds(a)
        assert int(got.argmax()) == int(expected.argmax())  # the shared pool's logits follow where cells sit
    finally:
        for runner in runners:
            runner.close()


@pytest.mark.parametrize("host_gib", [1.0, 0.0])
def test_more_conversations_than_sequences_keep_their_history_in_host_memory(model_name: str, host_gib: float) -> None:
    """Five conversations on one sequence: with the host cache every second turn finds its whole first turn and
    answers as a cold engine does; without it only the most recent conversation still has its cells."""
    rng = random.Random(43)
    first_turns = [[rng.randrange(0, 151000) for _ in range(90)] for _ in range(5)]
    engine = make_engine(model_name, max_num_seqs=1, llamacpp_host_cache_memory=host_gib)
    cold = make_engine(model_name, max_num_seqs=1, enable_prefix_caching=False)
    answers = {i: run(engine, {f"c{i}-1": (p, greedy(6))})[f"c{i}-1"] for i, p in enumerate(first_turns)}
    hits = {}
    for i in reversed(range(len(first_turns))):
        second = first_turns[i] + answers[i] + [7, 8, 9]
        tokens, cached = run_with_cache_counts(engine, {f"c{i}-2": (second, greedy(4))})
        assert tokens[f"c{i}-2"] == run(cold, {f"cold{i}": (second, greedy(4))})[f"cold{i}"]
        hits[i] = cached[f"c{i}-2"]
    whole = [i for i in hits if hits[i] >= len(first_turns[i]) + len(answers[i]) - 1]
    assert whole == ([4, 3, 2, 1, 0] if host_gib else [4]), hits
    stats = engine.stats()
    if host_gib:  # the four older conversations came back from host memory (the newest was still in its sequence)
        assert stats["host_cache_restored"] == 4 and stats["host_cache_entries"] >= 4
        assert stats["host_cache_bytes"] > 0 and stats["host_cache_saved"] >= 8
    else:
        assert "host_cache_restored" not in stats


# -- one shared KV pool (the served default): long requests use what idle sequences do not ---------------------

POOL_CELLS = 2048  # per-sequence KV would give each of 4 sequences 512 cells


def shared_pool_engine(name: str, **overrides: object) -> LLMEngine:
    settings = Settings(model="unused", **{"max_num_seqs": 4, "max_num_batched_tokens": 512,  # type: ignore[arg-type]
                                           "llamacpp_kv_unified": True, **overrides})  # fmt: skip
    return build_llamacpp_engine(settings, gguf_of(name, "Q8_0"), tokenizer_of(name), POOL_CELLS, kv_cells=POOL_CELLS)


def test_shared_pool_serves_a_long_request_beside_another_and_evicts_retained_prefixes() -> None:
    rng = random.Random(40)
    long_prompts = [[rng.randrange(0, 151000) for _ in range(1500)] for _ in range(2)]
    short = prompts(6, seed=41)[5]
    engine = shared_pool_engine("tiny")
    runner = engine.runner
    assert isinstance(runner, LlamaCppModelRunner) and runner.n_ctx_seq == POOL_CELLS and runner.flash_attention
    first = run(engine, {"long": (long_prompts[0], greedy(16)), "short": (short, greedy(16))})
    assert [len(first["long"]), len(first["short"])] == [16, 16]
    # "long" is retained for prefix reuse (1,516 cells); a second, different long prompt needs them back.
    assert runner.num_retained_slots == 2
    again = run(engine, {"long2": (long_prompts[1], greedy(8)), "short2": (short, greedy(8))})
    assert len(again["long2"]) == 8 and again["short2"] == first["short"][:8]
    # What holds in the shared pool: the same requests give the same tokens (a fresh engine, same batch).
    assert run(shared_pool_engine("tiny"), {"long": (long_prompts[0], greedy(16)), "short": (short, greedy(16))}) == first


@pytest.mark.parametrize(("retained", "host_gib"), [(16, 0.0), (0, 0.0), (0, 1.0)])
def test_shared_pool_keeps_more_conversations_than_it_runs(retained: int, host_gib: float) -> None:
    """Six conversations, two running at a time: with 16 sequence ids kept for finished requests, or with the
    host-memory cache, each one's second turn finds its first turn's cells; with neither, only the two most recent
    conversations still have theirs."""
    rng = random.Random(42)
    first_turns = [[rng.randrange(0, 151000) for _ in range(120)] for _ in range(6)]
    engine = shared_pool_engine("tiny", max_num_seqs=2, llamacpp_retained_sequences=retained,
                                llamacpp_host_cache_memory=host_gib)  # fmt: skip
    runner = engine.runner
    assert isinstance(runner, LlamaCppModelRunner) and runner.num_slots == 2 + retained
    answers = {}
    for i, prompt in enumerate(first_turns):
        answers[i] = run(engine, {f"c{i}-1": (prompt, greedy(8))})[f"c{i}-1"]
    hits = {}
    for i in reversed(range(len(first_turns))):  # the most recent conversation first
        second = first_turns[i] + answers[i] + [7, 8, 9]
        tokens, cached = run_with_cache_counts(engine, {f"c{i}-2": (second, greedy(4))})
        assert len(tokens[f"c{i}-2"]) == 4
        hits[i] = cached[f"c{i}-2"]
    if retained or host_gib:
        assert all(hits[i] >= len(first_turns[i]) for i in hits), hits
    else:
        assert [i for i in hits if hits[i] >= len(first_turns[i])] == [5, 4], hits
