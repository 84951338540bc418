"""Our engine against HF transformers: greedy parity by teacher forcing, batch invariance, prefix caching,
preemption, seeded sampling, and stop handling — all in float32 on random-weight Qwen3 models."""

from __future__ import annotations

import functools
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from qwen3_api.config import Settings
from qwen3_api.demo_models.checkpoints import cached_test_model
from qwen3_api.engine.llm_engine import LLMEngine
from qwen3_api.engine.outputs import FinishReason
from qwen3_api.engine.sampling import SamplingParams
from qwen3_api.engine.tokenizer import Tokenizer
from qwen3_api.runtime.torch_engine import build_llm_engine

NEAR_TIE = 1e-4

MODELS = {
    # A larger init std than real checkpoints gives random weights usable top-1 margins.
    "tiny": dict(shape="tiny", init_std=0.5),
    "deep": dict(shape="0.6b", num_layers=4, init_std=0.05),
}


@pytest.fixture(scope="module", params=list(MODELS))
def model_dir(request: pytest.FixtureRequest) -> Path:
    return cached_test_model(**MODELS[request.param])  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def hf_model(model_dir: Path):  # type: ignore[no-untyped-def]
    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()


def make_engine(model_dir: Path, **overrides: object) -> LLMEngine:
    settings = Settings(model=str(model_dir), **{"max_model_len": 1024, "kv_cache_memory": 0.25, **overrides})
    return build_llm_engine(
        settings, model_dir, torch.device("cpu"), torch.float32, tokenizer_of(model_dir), settings.max_model_len or 1024
    )


@functools.cache
def tokenizer_of(model_dir: Path) -> Tokenizer:
    return Tokenizer(model_dir)


def run(engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]], **group: str) -> dict[str, list[int]]:
    """Submit all requests, step until done; return each request's output tokens."""
    for request_id, (prompt, params) in requests.items():
        engine.add_request(request_id, prompt, params, group.get(request_id))
    tokens: dict[str, list[int]] = {request_id: [] for request_id in requests}
    finishes: dict[str, FinishReason] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens[out.request_id].extend(out.new_token_ids)
            if out.finish_reason is not None:
                finishes[out.request_id] = out.finish_reason
    assert set(finishes) == set(requests)
    assert engine.scheduler.kv_stats.num_free_blocks == engine.scheduler.kv_stats.num_blocks
    return tokens


def prompts(count: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    lengths = [1, 5, 17, 31, 64, 100, 3, 48, 250, 9, 77, 16, 33, 120, 2, 15][:count]
    return [[rng.randrange(0, 151000) for _ in range(n)] for n in lengths]


def greedy(max_tokens: int = 64) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)


def assert_teacher_forced_parity(hf_model, prompt: list[int], output: list[int]) -> None:  # type: ignore[no-untyped-def]
    """Each token we chose greedily is the reference's argmax, or within NEAR_TIE of its max logit."""
    with torch.inference_mode():
        logits = hf_model(torch.tensor([prompt + output])).logits[0, len(prompt) - 1 : -1].float()  # [out, V]
    chosen = logits[torch.arange(len(output)), torch.tensor(output)]
    gaps = logits.max(dim=-1).values - chosen
    worst = int(gaps.argmax())
    assert float(gaps.max()) <= NEAR_TIE, f"step {worst}: chose {output[worst]}, gap {float(gaps.max()):.3g}"


def test_greedy_parity_with_hf_by_teacher_forcing(model_dir: Path, hf_model) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(model_dir)
    batch = prompts(8)
    outputs = run(engine, {f"r{i}": (p, greedy(64)) for i, p in enumerate(batch)})
    for i, prompt in enumerate(batch):
        assert len(outputs[f"r{i}"]) == 64
        assert_teacher_forced_parity(hf_model, prompt, outputs[f"r{i}"])


def test_greedy_equals_hf_generate(model_dir: Path, hf_model) -> None:  # type: ignore[no-untyped-def]
    prompt = prompts(5)[4]
    ours = run(make_engine(model_dir), {"a": (prompt, greedy(32))})["a"]
    with torch.inference_mode():
        theirs = hf_model.generate(
            torch.tensor([prompt]), max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0
        )[0, len(prompt) :].tolist()
    assert ours == theirs


def run_alone(engine: LLMEngine, batch: list[list[int]], params: SamplingParams) -> dict[str, list[int]]:
    """Each prompt on its own, one after another (on an engine without prefix caching, so nothing is shared)."""
    return {f"r{i}": run(engine, {f"r{i}": (p, params)})[f"r{i}"] for i, p in enumerate(batch)}


def test_batch_invariance_16_concurrent_mixed_lengths(model_dir: Path) -> None:
    batch = prompts(16, seed=1)
    alone = run_alone(make_engine(model_dir, enable_prefix_caching=False), batch, greedy(24))
    together = run(make_engine(model_dir, max_num_batched_tokens=128), {f"r{i}": (p, greedy(24)) for i, p in enumerate(batch)})
    assert together == alone


def test_prefix_cache_hit_gives_the_same_tokens(model_dir: Path) -> None:
    shared = prompts(9, seed=2)[8][:200]
    first, second = shared + [11, 12, 13], shared + [21, 22]
    cold = run(make_engine(model_dir, enable_prefix_caching=False), {"b": (second, greedy(32))})["b"]
    engine = make_engine(model_dir)
    run(engine, {"a": (first, greedy(8))})
    warm = run(engine, {"b": (second, greedy(32))})["b"]
    assert engine.scheduler.kv_stats.prefix_hit_tokens >= 192  # 12 full blocks of 16 shared tokens
    assert warm == cold


def test_preempted_and_resumed_equals_uninterrupted(model_dir: Path) -> None:
    batch = prompts(6, seed=3)
    reference = run_alone(make_engine(model_dir, enable_prefix_caching=False), batch, greedy(48))
    # A KV cache this small cannot hold all six at once: the scheduler must preempt and recompute.
    tight = make_engine(model_dir, kv_cache_memory=_kv_budget_for_tokens(model_dir, 400), max_model_len=400)
    outputs = run(tight, {f"r{i}": (p, greedy(48)) for i, p in enumerate(batch)})
    assert outputs == reference
    assert tight.scheduler.num_preemptions > 0


def _kv_budget_for_tokens(model_dir: Path, tokens: int) -> float:
    from qwen3_api.executors.model_runner import TorchModelRunner
    from qwen3_api.models.weights import Qwen3ModelConfig

    per_token = TorchModelRunner.kv_bytes_per_token(Qwen3ModelConfig.from_dir(model_dir), torch.float32)
    return per_token * tokens / 2**30


def test_seeded_sampling_is_reproducible_alone_and_in_a_busy_batch(model_dir: Path) -> None:
    prompt = prompts(3, seed=4)[2]
    seeded = SamplingParams(max_tokens=24, temperature=1.0, top_p=0.9, top_k=50, seed=1234, ignore_eos=True)
    alone = run(make_engine(model_dir), {"s": (prompt, seeded)})["s"]
    noise = {f"n{i}": (p, SamplingParams(max_tokens=30, temperature=0.8, ignore_eos=True)) for i, p in enumerate(prompts(7, 5))}
    busy = run(make_engine(model_dir), {**noise, "s": (prompt, seeded)})["s"]
    other_seed = run(make_engine(model_dir), {"s": (prompt, SamplingParams(**{**seeded.__dict__, "seed": 99}))})["s"]
    assert busy == alone
    assert other_seed != alone


def test_end_token_stops_and_max_tokens_is_length(model_dir: Path) -> None:
    prompt = prompts(4, seed=6)[3]
    free = run(make_engine(model_dir), {"a": (prompt, greedy(16))})["a"]
    stop_at = free[5]
    engine = make_engine(model_dir)
    engine.add_request("a", prompt, SamplingParams(max_tokens=16, temperature=0, stop_token_ids=(stop_at,)))
    finish = None
    tokens: list[int] = []
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens += out.new_token_ids
            finish = out.finish_reason or finish
    assert tokens == free[: free.index(stop_at) + 1] and finish is FinishReason.STOP


def test_abort_frees_blocks_at_once(model_dir: Path) -> None:
    engine = make_engine(model_dir)
    for i, p in enumerate(prompts(4, seed=7)):
        engine.add_request(f"r{i}", p, greedy(100))
    for _ in range(3):
        engine.step()
    for i in range(4):
        engine.abort_request(f"r{i}")
    stats = engine.scheduler.kv_stats
    assert stats.num_free_blocks == stats.num_blocks and not engine.has_unfinished_requests()


def test_step_timing_counts_every_step_and_separates_decode_only_steps(model_dir: Path) -> None:
    # Two prompts of 250 and 100 tokens at 128 tokens a step: prefill spans 3 steps (250's first 128; its last 122
    # and 100's first 6; 250's first decode beside 100's last 94), then 7 decode-only steps finish 100's 8 tokens.
    engine = make_engine(model_dir, max_num_batched_tokens=128, enable_prefix_caching=False)
    rng = random.Random(3)
    batch = {f"r{n}": ([rng.randrange(0, 151000) for _ in range(n)], greedy(8)) for n in (250, 100)}
    run(engine, batch)
    stats = engine.stats()
    assert stats["steps"] == 10
    assert stats["decode_steps"] == 7
    assert 0 < stats["forward_seconds"] < stats["step_seconds"]
    assert 0 < stats["decode_step_seconds"] < stats["step_seconds"]
