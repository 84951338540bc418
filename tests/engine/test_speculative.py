"""Speculative decoding's engine side without a model: drafts attached within the budget and KV blocks, the
ordinary sampler run over the draft positions in order, and the scheduler keeping exactly the accepted tokens."""

from __future__ import annotations

import torch

from qwen3_api.engine.kv_cache import KVCacheManager
from qwen3_api.engine.protocols import SamplingRow
from qwen3_api.engine.sampling import SamplingParams
from qwen3_api.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from qwen3_api.engine.sequence import Sequence
from qwen3_api.engine.speculative import SpeculativeConfig, Speculator
from qwen3_api.executors.sampler import Sampler

EOS = 1
VOCAB = 50
PROMPT = [5, 6, 7, 8, 9, 5, 6]
FIRST = 7  # the first sampled token: the context then ends with (5, 6, 7), which was followed by 8 9 5 6


def make_scheduler(num_blocks: int = 64, max_num_batched_tokens: int = 64, max_model_len: int = 64) -> Scheduler:
    config = SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=max_num_batched_tokens, block_size=4,
                             max_model_len=max_model_len, eos_token_ids=(EOS,))  # fmt: skip
    return Scheduler(config, KVCacheManager(num_blocks, 4))


def speculator(num_tokens: int = 3, max_batch: int = 2) -> Speculator:
    return Speculator(SpeculativeConfig(num_tokens, 2, 3, max_batch), (EOS,))


def decoding(scheduler: Scheduler, request_id: str, params: SamplingParams, prompt: list[int] = PROMPT) -> Sequence:
    """Admit a request and compute its prompt, so that its next step is a decode."""
    seq = Sequence(request_id, list(prompt), params)
    scheduler.add(seq)
    out = scheduler.schedule()
    scheduler.update(out, {c.seq.request_id: FIRST for c in out.chunks if c.samples})  # others decode too
    return seq


def one_hot_rows(token_ids: list[int]) -> torch.Tensor:
    logits = torch.full((len(token_ids), VOCAB), -10.0)
    logits[torch.arange(len(token_ids)), torch.tensor(token_ids)] = 10.0
    return logits


def test_greedy_keeps_the_agreeing_prefix_and_the_bonus_token() -> None:
    scheduler, spec = make_scheduler(), speculator(num_tokens=3)
    seq = decoding(scheduler, "a", SamplingParams(max_tokens=20, temperature=0))
    out = scheduler.schedule()
    drafts = spec.propose(out, lambda s: True)
    assert drafts == {"a": [8, 9, 5]}
    scheduler.attach_drafts(out, drafts)
    (chunk,) = out.chunks
    assert chunk.draft_token_ids == (8, 9, 5) and out.num_scheduled_tokens == 4
    # The model agrees with 8 and 9, then wants 30 instead of 5.
    logits = one_hot_rows([8, 9, 30, 31])
    row = SamplingRow("a", seq.params, seq.prompt_token_ids, seq.output_token_ids)
    picked = {"a": Sampler().sample(logits[:1], [row])[0]}
    more = spec.verify(Sampler(), logits, [chunk], [0], picked)
    assert [t.token_id for t in more["a"]] == [9, 30]
    assert (spec.num_draft_tokens, spec.num_accepted_tokens) == (3, 2)
    computed = seq.num_computed_tokens
    scheduler.update(out, {"a": 30}, accepted={"a": [8, 9]})
    assert seq.output_token_ids == [FIRST, 8, 9, 30]
    assert seq.num_computed_tokens == computed + 3  # the decoded token and the two accepted drafts


def test_the_token_limit_caps_the_drafts() -> None:
    scheduler, spec = make_scheduler(), speculator(num_tokens=3)
    decoding(scheduler, "a", SamplingParams(max_tokens=3, temperature=0))
    out = scheduler.schedule()
    # One token is out, 2 remain: the step's own token plus at most 1 draft.
    assert spec.propose(out, lambda s: True) == {"a": [8]}


def test_ineligible_rows_and_full_batches_get_no_drafts() -> None:
    scheduler, spec = make_scheduler(), speculator(max_batch=2)
    decoding(scheduler, "a", SamplingParams(max_tokens=20, temperature=0))
    out = scheduler.schedule()
    assert spec.propose(out, lambda s: False) == {}
    for rid in ("b", "c"):
        decoding(scheduler, rid, SamplingParams(max_tokens=20, temperature=0))
    out = scheduler.schedule()
    assert sum(c.num_new_tokens == 1 for c in out.chunks) == 3
    assert spec.propose(out, lambda s: True) == {}
    assert spec.num_full_batch_steps == 1


def test_drafts_never_take_blocks_that_are_not_free_nor_budget_that_is_not_left() -> None:
    scheduler = make_scheduler(num_blocks=16, max_num_batched_tokens=16)
    seq = decoding(scheduler, "a", SamplingParams(max_tokens=40, temperature=0))
    out = scheduler.schedule()
    scheduler.attach_drafts(out, {"a": list(range(10, 40))})
    # Budget 16 tokens: the decode takes 1, the drafts get the other 15.
    assert len(out.chunks[0].draft_token_ids) == 15
    assert len(seq.block_table) * 4 >= seq.num_computed_tokens + 16
    small = make_scheduler(num_blocks=3, max_model_len=12)  # 12 tokens of KV: the prompt holds 2 blocks, 1 block is left
    seq = decoding(small, "a", SamplingParams(max_tokens=4, temperature=0))
    out = small.schedule()
    small.attach_drafts(out, {"a": [10, 11, 12, 13, 14, 15]})
    assert seq.num_computed_tokens + 1 + len(out.chunks[0].draft_token_ids) <= 12


def test_seeded_sampling_draws_one_number_per_token_as_without_drafts() -> None:
    """A seeded row verified over several positions keeps the tokens that sampling those positions one step at a
    time gives: the generator is drawn once per kept token, in order; on a rejected draft the kept token is the
    one the plain decode would have drawn."""
    torch.manual_seed(0)
    logits = torch.randn(4, VOCAB)
    params = SamplingParams(max_tokens=20, temperature=1.0, seed=1234)
    one_by_one, sampler = [], Sampler()
    sampler.add_request("a", params)
    for row in range(4):
        token = sampler.sample(logits[row : row + 1], [SamplingRow("a", params, PROMPT, one_by_one)])[0]
        one_by_one.append(token.token_id)
    wrong = (one_by_one[1] + 1) % VOCAB
    for drafts, kept in ((one_by_one[:3], one_by_one), ([one_by_one[0], wrong, 0], one_by_one[:2])):
        scheduler, spec = make_scheduler(), speculator(num_tokens=3)
        seq = decoding(scheduler, "a", params)
        out = scheduler.schedule()
        scheduler.attach_drafts(out, {"a": drafts})
        verifier = Sampler()
        verifier.add_request("a", params)
        row = SamplingRow("a", params, seq.prompt_token_ids, seq.output_token_ids)
        first = verifier.sample(logits[:1], [row])[0]
        more = spec.verify(verifier, logits, out.chunks, [0], {"a": first})
        assert [first.token_id, *[t.token_id for t in more["a"]]] == kept


def test_update_stops_at_the_end_token_among_kept_tokens() -> None:
    scheduler = make_scheduler()
    seq = decoding(scheduler, "a", SamplingParams(max_tokens=20, temperature=0))
    out: SchedulerOutput = scheduler.schedule()
    scheduler.attach_drafts(out, {"a": [8, 9]})
    finished = scheduler.update(out, {"a": EOS}, accepted={"a": [8, 9]})
    assert finished == [seq] and seq.output_token_ids == [FIRST, 8, 9, EOS]
