"""Scheduler: FIFO admission, chunked prefill, prefix caching, prefix groups, preemption, abort and finishing.

A fake executor stands in for the model: it writes each chunk's tokens into a fake paged KV store through the
block table and "samples" a deterministic function of the tokens it reads back. A wrong block table, a stale
prefix hit or a lost token therefore shows up as a wrong output, checked against a plain reference loop.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from qwen3_api.engine.kv_cache import KVCacheManager
from qwen3_api.engine.outputs import FinishReason
from qwen3_api.engine.sampling import SamplingParams
from qwen3_api.engine.scheduler import ScheduledChunk, Scheduler, SchedulerConfig, SchedulerOutput
from qwen3_api.engine.sequence import Sequence, SequenceStatus
from qwen3_api.errors import ContextLengthExceededError, EngineError, InvalidRequestError

EOS = 1
BLOCK = 4
NextToken = Callable[[list[int]], int]


def next_token(history: list[int]) -> int:
    """The fake model: a token in [100, 600) determined by the whole history (never EOS)."""
    value = len(history)
    for token in history:
        value = (value * 31 + token) % 1_000_003
    return 100 + value % 500


def reference_output(prompt: list[int], params: SamplingParams, model: NextToken = next_token) -> list[int]:
    """What an uninterrupted run must produce: sample, append, stop on EOS / stop ids / max_tokens."""
    history, output = list(prompt), []
    while True:
        token = model(history)
        history.append(token)
        output.append(token)
        if (token == EOS and not params.ignore_eos) or token in params.stop_token_ids:
            return output
        if len(output) >= params.max_tokens:
            return output


class FakeExecutor:
    """Writes chunk tokens into paged slots via the block table; samples from what it reads back."""

    def __init__(self, block_size: int, model: NextToken = next_token) -> None:
        self.block_size = block_size
        self.model = model
        self.slots: dict[int, list[int | None]] = {}

    def execute(self, output: SchedulerOutput) -> dict[str, int]:
        size = self.block_size
        for chunk in output.chunks:
            seq, start = chunk.seq, chunk.start_position
            assert start == seq.num_computed_tokens
            end = start + chunk.num_new_tokens
            assert chunk.num_new_tokens > 0 and end <= seq.num_tokens
            assert len(seq.block_table) * size >= end, "block table does not cover the chunk"
            for pos in range(start, end):
                block = self.slots.setdefault(seq.block_table[pos // size], [None] * size)
                block[pos % size] = seq.token_id_at(pos)
        sampled = {}
        for chunk in output.chunks:  # read after all writes: sequences must not clobber each other's blocks
            seq = chunk.seq
            end = chunk.start_position + chunk.num_new_tokens
            history = [self.slots[seq.block_table[p // size]][p % size] for p in range(end)]
            assert history == seq.all_token_ids[:end], f"KV cache of {seq.request_id} holds the wrong tokens"
            if chunk.samples:
                sampled[seq.request_id] = self.model(history)  # type: ignore[arg-type]
        return sampled


def check_step(scheduler: Scheduler, output: SchedulerOutput) -> None:
    """Invariants after every schedule(): budget, max_num_seqs, one chunk per sequence, exact ref counts."""
    config = scheduler.config
    assert output.num_scheduled_tokens <= config.max_num_batched_tokens
    assert scheduler.num_running <= config.max_num_seqs
    ids = [chunk.seq.request_id for chunk in output.chunks]
    assert len(ids) == len(set(ids))
    assert all(chunk.seq.status is SequenceStatus.RUNNING for chunk in output.chunks)
    running = [seq for seq in scheduler._running]
    assert all(not seq.block_table for seq in scheduler._waiting)
    scheduler.kv_cache.check_invariants(holders=running)


def step(scheduler: Scheduler, executor: FakeExecutor) -> tuple[SchedulerOutput, list[Sequence]]:
    running_before = {seq.request_id for seq in scheduler._running}
    output = scheduler.schedule()
    check_step(scheduler, output)
    if output.preempted:  # blocks ran short: nobody is admitted in the same step
        assert {chunk.seq.request_id for chunk in output.chunks} <= running_before
    finished = scheduler.update(output, executor.execute(output))
    scheduler.kv_cache.check_invariants(holders=scheduler._running)
    return output, finished


def run_to_completion(scheduler: Scheduler, executor: FakeExecutor, max_steps: int = 1000) -> int:
    """Step until nothing is left; return the number of steps."""
    for steps in range(1, max_steps + 1):
        step(scheduler, executor)
        if not scheduler.has_unfinished():
            return steps
    raise AssertionError(f"not finished after {max_steps} steps")


def make_seq(
    request_id: str,
    prompt: list[int],
    max_tokens: int = 4,
    prefix_group: str | None = None,
    **params: object,
) -> Sequence:
    return Sequence(
        request_id=request_id,
        prompt_token_ids=list(prompt),
        params=SamplingParams(max_tokens=max_tokens, **params),  # type: ignore[arg-type]
        prefix_group=prefix_group,
    )


SchedulerFactory = Callable[..., Scheduler]


@pytest.fixture
def make_scheduler() -> Iterator[SchedulerFactory]:
    """Builds schedulers; after the test, each must be drained with every block back in the free queue."""
    made: list[Scheduler] = []

    def factory(
        num_blocks: int = 64,
        max_num_seqs: int = 8,
        max_num_batched_tokens: int = 64,
        max_model_len: int = 64,
        prefix_caching: bool = True,
    ) -> Scheduler:
        config = SchedulerConfig(
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            block_size=BLOCK,
            max_model_len=max_model_len,
            eos_token_ids=(EOS,),
        )
        scheduler = Scheduler(config, KVCacheManager(num_blocks, BLOCK, enable_prefix_caching=prefix_caching))
        made.append(scheduler)
        return scheduler

    yield factory
    for scheduler in made:
        assert not scheduler.has_unfinished(), "test left sequences in the scheduler"
        scheduler.kv_cache.check_invariants(holders=[])
        assert scheduler.kv_cache.num_free_blocks == scheduler.kv_cache.num_blocks


# --- configuration ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"max_num_seqs": 0},
        {"max_num_batched_tokens": 0},
        {"block_size": 0},
        {"max_model_len": -1},
        {"max_num_seqs": True},
        {"max_num_seqs": 8, "max_num_batched_tokens": 4},
        {"eos_token_ids": [1]},
        {"eos_token_ids": ("1",)},
    ],
)
def test_config_rejects_bad_values(overrides: dict[str, object]) -> None:
    values: dict[str, object] = {
        "max_num_seqs": 4,
        "max_num_batched_tokens": 16,
        "block_size": 4,
        "max_model_len": 32,
        "eos_token_ids": (1,),
    }
    with pytest.raises(ValueError):
        SchedulerConfig(**{**values, **overrides})  # type: ignore[arg-type]


def test_scheduler_rejects_a_cache_that_cannot_hold_one_sequence() -> None:
    config = SchedulerConfig(
        max_num_seqs=2, max_num_batched_tokens=8, block_size=4, max_model_len=32, eos_token_ids=(EOS,)
    )
    with pytest.raises(ValueError):
        Scheduler(config, KVCacheManager(num_blocks=7, block_size=4))
    with pytest.raises(ValueError):
        Scheduler(config, KVCacheManager(num_blocks=16, block_size=2))
    Scheduler(config, KVCacheManager(num_blocks=8, block_size=4))


def test_add_rejects_bad_sequences(make_scheduler: SchedulerFactory) -> None:
    scheduler = make_scheduler(max_model_len=16)
    with pytest.raises(InvalidRequestError):
        scheduler.add(make_seq("empty", []))
    with pytest.raises(ContextLengthExceededError):
        scheduler.add(make_seq("long", list(range(10)), max_tokens=7))
    scheduler.add(make_seq("ok", list(range(10)), max_tokens=6))
    with pytest.raises(ValueError):
        scheduler.add(make_seq("ok", [5]))
    scheduler.abort("ok")


def test_modules_do_not_import_torch() -> None:
    code = (
        "import sys, qwen3_api.engine.scheduler, qwen3_api.engine.kv_cache; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- admission and batching ------------------------------------------------------------------------------


def test_fifo_admission_up_to_max_num_seqs(make_scheduler: SchedulerFactory) -> None:
    scheduler = make_scheduler(max_num_seqs=2)
    executor = FakeExecutor(BLOCK)
    for name, max_tokens in (("a", 1), ("b", 3), ("c", 2)):
        scheduler.add(make_seq(name, [10, 11, 12], max_tokens=max_tokens))
    output, finished = step(scheduler, executor)
    assert [chunk.seq.request_id for chunk in output.chunks] == ["a", "b"]
    assert [seq.request_id for seq in finished] == ["a"]
    assert scheduler.num_waiting == 1
    output, _ = step(scheduler, executor)
    # b decodes first; c takes a's place.
    assert [(c.seq.request_id, c.num_new_tokens) for c in output.chunks] == [("b", 1), ("c", 3)]
    assert output.finished_request_ids == ["a"]
    run_to_completion(scheduler, executor)


def test_chunked_prefill_respects_budget_and_decodes_every_step(make_scheduler: SchedulerFactory) -> None:
    scheduler = make_scheduler(max_num_batched_tokens=8, max_num_seqs=4)
    executor = FakeExecutor(BLOCK)
    decoder = make_seq("decoder", [7, 8, 9], max_tokens=10)
    scheduler.add(decoder)
    step(scheduler, executor)
    long_prompt = make_seq("long", list(range(200, 230)), max_tokens=2)
    scheduler.add(long_prompt)
    long_chunks = []
    for _ in range(5):
        output, _ = step(scheduler, executor)
        assert output.chunks[0].seq is decoder and output.chunks[0].num_new_tokens == 1
        assert output.chunks[1].seq is long_prompt
        assert output.num_scheduled_tokens <= 8
        long_chunks.append((output.chunks[1].num_new_tokens, output.chunks[1].samples))
    assert long_chunks == [(7, False), (7, False), (7, False), (7, False), (2, True)]
    assert len(long_prompt.output_token_ids) == 1
    run_to_completion(scheduler, executor)
    assert decoder.output_token_ids == reference_output(decoder.prompt_token_ids, decoder.params)
    assert long_prompt.output_token_ids == reference_output(long_prompt.prompt_token_ids, long_prompt.params)


def test_chunk_samples_only_at_the_end() -> None:
    seq = make_seq("a", [1, 2, 3, 4, 5])
    assert not ScheduledChunk(seq, 4).samples
    assert ScheduledChunk(seq, 5).samples
    seq.num_computed_tokens = 4
    assert ScheduledChunk(seq, 1).samples


# --- prefix caching --------------------------------------------------------------------------------------


def test_second_request_starts_at_the_prefix_hit(make_scheduler: SchedulerFactory) -> None:
    scheduler = make_scheduler()
    executor = FakeExecutor(BLOCK)
    shared = list(range(300, 310))  # 2 full blocks + 2 tokens
    first = make_seq("first", shared + [1000, 1001])
    scheduler.add(first)
    run_to_completion(scheduler, executor)
    second = make_seq("second", shared + [2000, 2001, 2002])
    scheduler.add(second)
    output = scheduler.schedule()
    (chunk,) = output.chunks
    assert second.num_cached_tokens == 8 and second.num_computed_tokens == 8
    assert chunk.num_new_tokens == len(second.prompt_token_ids) - 8 and chunk.samples
    assert scheduler.kv_stats.prefix_hit_tokens == 8
    scheduler.update(output, executor.execute(output))
    run_to_completion(scheduler, executor)
    assert second.output_token_ids == reference_output(second.prompt_token_ids, second.params)


def test_identical_prompt_still_computes_its_last_token(make_scheduler: SchedulerFactory) -> None:
    scheduler = make_scheduler()
    executor = FakeExecutor(BLOCK)
    prompt = list(range(400, 408))  # exactly 2 blocks
    scheduler.add(make_seq("first", prompt))
    run_to_completion(scheduler, executor)
    again = make_seq("again", prompt)
    scheduler.add(again)
    output = scheduler.schedule()
    assert again.num_cached_tokens == 4
    assert output.chunks[0].num_new_tokens == 4
    scheduler.update(output, executor.execute(output))
    run_to_completion(scheduler, executor)
    assert again.output_token_ids == reference_output(prompt, again.params)


def test_prefix_shared_with_a_running_sequence(make_scheduler: SchedulerFactory) -> None:
    scheduler = make_scheduler()
    executor = FakeExecutor(BLOCK)
    prompt = list(range(500, 513))
    first = make_seq("first", prompt, max_tokens=8)
    scheduler.add(first)
    step(scheduler, executor)
    second = make_seq("second", prompt + [7], max_tokens=8)
    scheduler.add(second)
    step(scheduler, executor)
    assert second.num_cached_tokens == 12
    assert second.block_table[:3] == first.block_table[:3]
    run_to_completion(scheduler, executor)
    assert first.output_token_ids == reference_output(first.prompt_token_ids, first.params)
    assert second.output_token_ids == reference_output(second.prompt_token_ids, second.params)


@pytest.mark.parametrize("grouped", [True, False])
def test_prefix_group_siblings_wait_for_the_cached_prompt(
    make_scheduler: SchedulerFactory, grouped: bool
) -> None:
    scheduler = make_scheduler(max_num_batched_tokens=16)
    executor = FakeExecutor(BLOCK)
    prompt = list(range(600, 612))  # 3 full blocks
    group = "req-1" if grouped else None
    siblings = [make_seq(f"req-1-{i}", prompt, max_tokens=3, prefix_group=group) for i in range(3)]
    other = make_seq("other", [5, 6, 7, 8], max_tokens=3)
    late = make_seq("late", [9, 10, 11], max_tokens=3)
    for seq in [*siblings, other, late]:
        scheduler.add(seq)
    first, _ = step(scheduler, executor)
    scheduled = [(c.seq.request_id, c.num_new_tokens) for c in first.chunks]
    if grouped:
        # Siblings keep their place while the leader prefills; the unrelated request goes ahead.
        assert scheduled == [("req-1-0", 12), ("other", 4)]
        assert [seq.request_id for seq in scheduler._waiting] == ["req-1-1", "req-1-2", "late"]
        second, _ = step(scheduler, executor)
        assert [c.seq.request_id for c in second.chunks] == ["req-1-0", "other", "req-1-1", "req-1-2", "late"]
        assert [s.num_cached_tokens for s in siblings[1:]] == [8, 8]
    else:
        assert scheduled == [("req-1-0", 12), ("req-1-1", 4)]
        assert siblings[1].num_cached_tokens == 0
    run_to_completion(scheduler, executor)
    for seq in [*siblings, other, late]:
        assert seq.output_token_ids == reference_output(seq.prompt_token_ids, seq.params)


def test_siblings_join_once_the_cacheable_prompt_is_computed(make_scheduler: SchedulerFactory) -> None:
    """The leader's last partial block is computed by every sibling anyway: nobody waits for it."""
    scheduler = make_scheduler(max_num_batched_tokens=8)
    executor = FakeExecutor(BLOCK)
    prompt = list(range(700, 712))
    siblings = [make_seq(f"n-{i}", prompt, max_tokens=2, prefix_group="n") for i in range(2)]
    for seq in siblings:
        scheduler.add(seq)
    first, _ = step(scheduler, executor)
    assert [(c.seq.request_id, c.num_new_tokens) for c in first.chunks] == [("n-0", 8)]
    second, _ = step(scheduler, executor)
    assert [(c.seq.request_id, c.num_new_tokens) for c in second.chunks] == [("n-0", 4), ("n-1", 4)]
    assert siblings[1].num_cached_tokens == 8
    run_to_completion(scheduler, executor)
    for seq in siblings:
        assert seq.output_token_ids == reference_output(prompt, seq.params)


def test_prefix_groups_do_not_wait_without_prefix_caching(make_scheduler: SchedulerFactory) -> None:
    scheduler = make_scheduler(prefix_caching=False)
    executor = FakeExecutor(BLOCK)
    for i in range(2):
        scheduler.add(make_seq(f"n-{i}", list(range(800, 812)), max_tokens=2, prefix_group="n"))
    output, _ = step(scheduler, executor)
    assert [c.seq.request_id for c in output.chunks] == ["n-0", "n-1"]
    run_to_completion(scheduler, executor)


# --- preemption ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_preemption_recomputes_and_gives_the_same_output(
    make_scheduler: SchedulerFactory, prefix_caching: bool
) -> None:
    # 8 blocks (32 tokens); three sequences growing to 8 + 16 tokens each cannot all stay resident.
    scheduler = make_scheduler(num_blocks=8, max_num_seqs=3, max_model_len=32, prefix_caching=prefix_caching)
    executor = FakeExecutor(BLOCK)
    seqs = [make_seq(f"s{i}", [10 * i + j for j in range(8)], max_tokens=16) for i in range(4)]
    for seq in seqs:
        scheduler.add(seq)
    first_preemption: SchedulerOutput | None = None
    for _ in range(200):
        output, _ = step(scheduler, executor)
        if output.preempted and first_preemption is None:
            first_preemption = output
            # The most recently admitted goes, to the front of the queue, without its blocks or progress.
            assert output.preempted == [seqs[2]]
            assert list(scheduler._waiting) == [seqs[2], seqs[3]]
            assert seqs[2].status is SequenceStatus.WAITING and seqs[2].num_computed_tokens == 0
            assert seqs[2].block_table == [] and seqs[2].output_token_ids
            assert seqs[2] not in [c.seq for c in output.chunks]
        if not scheduler.has_unfinished():
            break
    assert first_preemption is not None
    assert sum(seq.num_preemptions for seq in seqs) >= 1
    for seq in seqs:
        assert seq.finish_reason is FinishReason.LENGTH
        assert seq.output_token_ids == reference_output(seq.prompt_token_ids, seq.params)


def test_preempted_recomputation_is_not_a_prefix_hit(make_scheduler: SchedulerFactory) -> None:
    # As above: s2 is preempted with output tokens and readmitted onto its own cached blocks. Distinct prompts
    # share nothing, so no sequence was served a prefix and the prefix statistics must say so.
    scheduler = make_scheduler(num_blocks=8, max_num_seqs=3, max_model_len=32)
    executor = FakeExecutor(BLOCK)
    seqs = [make_seq(f"s{i}", [10 * i + j for j in range(8)], max_tokens=16) for i in range(4)]
    for seq in seqs:
        scheduler.add(seq)
    run_to_completion(scheduler, executor)
    assert sum(seq.num_preemptions for seq in seqs) >= 1
    assert [seq.num_cached_tokens for seq in seqs] == [0, 0, 0, 0]
    stats = scheduler.kv_cache.stats
    assert stats.prefix_hit_tokens == 0
    assert stats.prefix_queried_tokens == sum(seq.num_prompt_tokens for seq in seqs)


def test_prefills_competing_for_blocks_do_not_deadlock(make_scheduler: SchedulerFactory) -> None:
    """Two long prompts admitted together, with no decode to free blocks: one must yield."""
    scheduler = make_scheduler(num_blocks=8, max_model_len=32, max_num_batched_tokens=8)
    executor = FakeExecutor(BLOCK)
    seqs = [make_seq(f"p{i}", [50 * i + j for j in range(28)], max_tokens=2) for i in range(2)]
    for seq in seqs:
        scheduler.add(seq)
    run_to_completion(scheduler, executor, max_steps=100)
    for seq in seqs:
        assert seq.output_token_ids == reference_output(seq.prompt_token_ids, seq.params)


def test_randomized_workload_matches_reference(make_scheduler: SchedulerFactory) -> None:
    """Random arrivals, shared prefixes, groups and aborts under a tight cache: outputs stay exact."""
    rng = random.Random(1234)
    num_preemptions = num_hit_tokens = 0
    for trial in range(8):
        scheduler = make_scheduler(
            num_blocks=rng.choice([12, 16, 24]),
            max_num_seqs=rng.choice([2, 4, 6]),
            max_num_batched_tokens=rng.choice([6, 8, 16, 48]),
            max_model_len=48,
            prefix_caching=trial % 4 != 3,
        )
        executor = FakeExecutor(BLOCK)
        bases = [[rng.randrange(100, 600) for _ in range(rng.randrange(4, 20))] for _ in range(3)]
        pending: list[Sequence] = []
        for i in range(14):
            prompt = rng.choice(bases)[: rng.randrange(1, 20)] + [rng.randrange(100, 600) for _ in range(3)]
            max_tokens = rng.randrange(1, 48 - len(prompt) + 1)
            group = f"g{i}" if rng.random() < 0.3 else None
            for k in range(2 if group else 1):
                pending.append(
                    make_seq(f"t{trial}-r{i}-{k}", prompt, max_tokens=max_tokens, prefix_group=group)
                )
        aborted: set[str] = set()
        everything = list(pending)
        for _ in range(2000):
            while pending and rng.random() < 0.5:
                scheduler.add(pending.pop(0))
            if rng.random() < 0.03 and scheduler._requests:
                victim = rng.choice(sorted(scheduler._requests))
                assert scheduler.abort(victim) is not None
                aborted.add(victim)
            step(scheduler, executor)
            if not pending and not scheduler.has_unfinished():
                break
        assert not scheduler.has_unfinished()
        for seq in everything:
            expected = reference_output(seq.prompt_token_ids, seq.params)
            if seq.request_id in aborted:
                assert seq.finish_reason is FinishReason.ABORT
                assert seq.output_token_ids == expected[: len(seq.output_token_ids)]
            else:
                assert seq.output_token_ids == expected, seq.request_id
            num_preemptions += seq.num_preemptions
        num_hit_tokens += scheduler.kv_stats.prefix_hit_tokens
    assert num_preemptions > 0 and num_hit_tokens > 0, "the workload no longer exercises what it should"


# --- abort -----------------------------------------------------------------------------------------------


def test_abort_waiting_request(make_scheduler: SchedulerFactory) -> None:
    scheduler = make_scheduler(max_num_seqs=1)
    executor = FakeExecutor(BLOCK)
    scheduler.add(make_seq("a", [1, 2, 3], max_tokens=3))
    scheduler.add(make_seq("b", [4, 5, 6]))
    step(scheduler, executor)
    aborted = scheduler.abort("b")
    assert aborted is not None and aborted.finish_reason is FinishReason.ABORT and aborted.is_finished
    assert scheduler.num_waiting == 0
    assert scheduler.abort("b") is None and scheduler.abort("nobody") is None
    output, _ = step(scheduler, executor)
    assert output.finished_request_ids == ["b"]
    assert "b" not in [c.seq.request_id for c in output.chunks]
    run_to_completion(scheduler, executor)


def test_abort_running_request_frees_blocks_at_once(make_scheduler: SchedulerFactory) -> None:
    scheduler = make_scheduler(num_blocks=20)
    executor = FakeExecutor(BLOCK)
    seq = make_seq("a", list(range(100, 110)), max_tokens=20)
    scheduler.add(seq)
    step(scheduler, executor)
    assert scheduler.kv_cache.num_free_blocks == 17
    output = scheduler.schedule()
    assert scheduler.abort("a") is seq
    assert scheduler.kv_cache.num_free_blocks == 20 and seq.block_table == []
    # The step scheduled before the abort completes; its token is dropped.
    assert scheduler.update(output, {"a": 123}) == []
    assert seq.output_token_ids == [next_token(seq.prompt_token_ids)]
    assert not scheduler.has_unfinished()
    assert scheduler.schedule().finished_request_ids == ["a"]


# --- finishing -------------------------------------------------------------------------------------------


def eos_after(n: int) -> NextToken:
    """A fake model that emits EOS as its (n+1)-th output token, then 9s."""

    def model(history: list[int]) -> int:
        produced = len(history) - 3  # prompts in these tests have 3 tokens
        return EOS if produced == n else 9

    return model


@pytest.mark.parametrize(
    ("params", "model", "expected", "reason"),
    [
        ({"max_tokens": 10}, eos_after(2), [9, 9, EOS], FinishReason.STOP),
        ({"max_tokens": 5, "ignore_eos": True}, eos_after(2), [9, 9, EOS, 9, 9], FinishReason.LENGTH),
        ({"max_tokens": 10, "stop_token_ids": (9,)}, eos_after(2), [9], FinishReason.STOP),
        (
            {"max_tokens": 10, "stop_token_ids": (9,), "ignore_eos": True},
            eos_after(5),
            [9],
            FinishReason.STOP,
        ),
        ({"max_tokens": 2}, eos_after(2), [9, 9], FinishReason.LENGTH),
        ({"max_tokens": 1}, eos_after(0), [EOS], FinishReason.STOP),
    ],
)
def test_finish_reasons(
    make_scheduler: SchedulerFactory,
    params: dict[str, object],
    model: NextToken,
    expected: list[int],
    reason: FinishReason,
) -> None:
    scheduler = make_scheduler()
    executor = FakeExecutor(BLOCK, model)
    seq = make_seq("a", [20, 21, 22], **params)  # type: ignore[arg-type]
    scheduler.add(seq)
    finished: list[Sequence] = []
    while scheduler.has_unfinished():
        finished += step(scheduler, executor)[1]
    assert finished == [seq]
    assert seq.output_token_ids == expected and seq.finish_reason is reason
    assert seq.status is SequenceStatus.FINISHED and seq.block_table == []


def test_update_requires_a_token_for_every_sampling_chunk(make_scheduler: SchedulerFactory) -> None:
    scheduler = make_scheduler()
    scheduler.add(make_seq("a", [1, 2, 3]))
    output = scheduler.schedule()
    with pytest.raises(EngineError):
        scheduler.update(output, {})
    scheduler.abort("a")


def test_update_rejects_a_step_applied_twice(make_scheduler: SchedulerFactory) -> None:
    scheduler = make_scheduler()
    scheduler.add(make_seq("a", [1, 2, 3, 4, 5, 6], max_tokens=5))
    output = scheduler.schedule()
    scheduler.update(output, {"a": 200})
    with pytest.raises(EngineError):
        scheduler.update(output, {"a": 200})
    scheduler.abort("a")
