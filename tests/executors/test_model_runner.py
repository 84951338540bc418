"""TorchModelRunner over the paged KV cache against Hugging Face transformers (float32 oracle).

HF's full-sequence logits at position p are what a correct cache must reproduce when position p is the
last new token of a step, whether it came in a one-shot prefill, a chunk, a decode or a mixed batch.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import Qwen3ForCausalLM as HFQwen3ForCausalLM

from qwen3_api.engine.protocols import BatchEntry
from qwen3_api.executors.model_runner import TorchModelRunner
from qwen3_api.models.qwen3 import Qwen3ModelConfig
from qwen3_api.models.weights import load_model
from tests.hf_models import DEEP, TINY, build_hf_model

HF_ATOL = 1e-4  # ours vs HF, float32 (observed ~1e-5 on the deep model)
SELF_ATOL = 1e-4  # ours vs ours along a different path (chunked vs one-shot, batched vs alone)
BLOCK_SIZE = 4  # small, so short test sequences span many blocks
NUM_BLOCKS = 256

class Case:
    """A saved checkpoint, its HF oracle, and our runner over it (built once per module)."""

    def __init__(self, path: Path, hf: HFQwen3ForCausalLM) -> None:
        self.path, self.hf = path, hf
        self.runner = TorchModelRunner(
            path, dtype=torch.float32, num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE
        )

    def hf_logits(self, tokens: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            return self.hf(torch.tensor([tokens])).logits[0].float()  # [T, V]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Case:
    path = tmp_path_factory.mktemp("tiny")
    return Case(path, build_hf_model(path, TINY, seed=0, init_std=0.1))


@pytest.fixture(scope="module")
def deep(tmp_path_factory: pytest.TempPathFactory) -> Case:
    path = tmp_path_factory.mktemp("deep")
    return Case(path, build_hf_model(path, DEEP, seed=1, init_std=0.05, max_shard_size="200MB"))


@pytest.fixture(params=["tiny", "deep"])
def case(request: pytest.FixtureRequest) -> Case:
    return request.getfixturevalue(request.param)


def tokens(length: int, seed: int) -> list[int]:
    return random.Random(seed).choices(range(151936), k=length)


def scrambled_table(num_tokens: int, seed: int) -> list[int]:
    """Distinct, shuffled, non-contiguous block ids covering `num_tokens` positions."""
    needed = -(-num_tokens // BLOCK_SIZE)
    return random.Random(seed).sample(range(NUM_BLOCKS), needed)


def run_chunks(
    runner: TorchModelRunner, seq: list[int], chunks: list[int], table: list[int]
) -> list[torch.Tensor]:
    """Feed `seq` in pieces of the given sizes; return each step's last-token logits [V]."""
    out, start = [], 0
    for size in chunks:
        logits = runner.forward([BatchEntry(seq[start : start + size], start, table, need_logits=True)])
        assert logits.shape == (1, runner.config.vocab_size) and logits.dtype == torch.float32
        out.append(logits[0])
        start += size
    return out


def test_one_shot_prefill_matches_hf(case: Case) -> None:
    seq = tokens(21, seed=1)
    (logits,) = run_chunks(case.runner, seq, [21], scrambled_table(21, seed=2))
    assert (logits - case.hf_logits(seq)[-1]).abs().max().item() < HF_ATOL


def test_chunked_prefill_with_scrambled_blocks_equals_one_shot(case: Case) -> None:
    seq = tokens(30, seed=3)
    chunks = [7, 1, 9, 13]  # crosses block boundaries at odd offsets, includes a one-token chunk
    chunked = run_chunks(case.runner, seq, chunks, scrambled_table(30, seed=4))
    (one_shot,) = run_chunks(case.runner, seq, [30], scrambled_table(30, seed=5))
    assert (chunked[-1] - one_shot).abs().max().item() < SELF_ATOL
    expected = case.hf_logits(seq)
    ends = [sum(chunks[: i + 1]) - 1 for i in range(len(chunks))]
    for got, end in zip(chunked, ends):
        assert (got - expected[end]).abs().max().item() < HF_ATOL


def test_decode_steps_match_hf_teacher_forced(case: Case) -> None:
    seq = tokens(26, seed=6)
    prompt_len = 10
    chunks = [prompt_len] + [1] * (len(seq) - prompt_len)
    steps = run_chunks(case.runner, seq, chunks, scrambled_table(26, seed=7))
    expected = case.hf_logits(seq)
    for offset, got in enumerate(steps[1:]):
        assert (got - expected[prompt_len + offset]).abs().max().item() < HF_ATOL


def test_mixed_batch_equals_each_sequence_alone(case: Case) -> None:
    """Three sequences of different lengths advance together: chunks, decodes and no-logit chunks mixed."""
    seqs = [tokens(n, seed=10 + i) for i, n in enumerate((19, 10, 25))]
    # per step, per sequence: number of new tokens (0 = not scheduled this step)
    plan = [
        (8, 5, 0),
        (6, 1, 10),
        (3, 1, 1),
        (1, 1, 12),
        (0, 1, 1),
        (1, 1, 1),
    ]
    tables = [scrambled_table(len(s), seed=20 + i) for i, s in enumerate(seqs)]
    cursor = [0, 0, 0]
    batched: list[list[tuple[int, torch.Tensor]]] = [[], [], []]
    for step in plan:
        entries, owners = [], []
        for i, n in enumerate(step):
            if n == 0:
                continue
            start = cursor[i]
            # a prefill chunk that does not finish the sequence's prompt needs no logits
            need = not (n > 1 and i == 2 and start + n < 24)
            entries.append(BatchEntry(seqs[i][start : start + n], start, tables[i], need_logits=need))
            if need:
                owners.append((i, start + n - 1))
            cursor[i] += n
        logits = case.runner.forward(entries)
        assert logits.shape == (len(owners), case.runner.config.vocab_size)
        for (i, position), row in zip(owners, logits):
            batched[i].append((position, row))
    assert cursor == [len(s) for s in seqs]

    for i, seq in enumerate(seqs):
        alone = case.runner.forward(
            [BatchEntry(seq, 0, scrambled_table(len(seq), seed=30 + i), need_logits=True)]
        )
        expected = case.hf_logits(seq)
        for position, row in batched[i]:
            assert (row - expected[position]).abs().max().item() < HF_ATOL
        assert batched[i][-1][0] == len(seq) - 1
        assert (batched[i][-1][1] - alone[0]).abs().max().item() < SELF_ATOL


def test_batched_decodes_of_different_lengths(case: Case) -> None:
    """A decode-only batch (the fast path) with padding: each row equals HF at its own position."""
    lengths = (5, 17, 9, 1)
    seqs = [tokens(n + 1, seed=40 + i) for i, n in enumerate(lengths)]
    tables = [scrambled_table(len(s), seed=50 + i) for i, s in enumerate(seqs)]
    prefill = [BatchEntry(s[:-1], 0, t, need_logits=False) for s, t in zip(seqs, tables)]
    assert case.runner.forward(prefill).shape == (0, case.runner.config.vocab_size)
    decodes = [BatchEntry(s[-1:], len(s) - 1, t, need_logits=True) for s, t in zip(seqs, tables)]
    logits = case.runner.forward(decodes)
    for seq, row in zip(seqs, logits):
        assert (row - case.hf_logits(seq)[-1]).abs().max().item() < HF_ATOL


def test_runner_from_loaded_module_in_bfloat16(tiny: Case) -> None:
    model = load_model(tiny.path, dtype="bfloat16")
    runner = TorchModelRunner(model, dtype=torch.bfloat16, num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE)
    assert runner.kv_cache.data.dtype == torch.bfloat16
    seq = tokens(24, seed=60)
    steps = run_chunks(runner, seq, [8] + [1] * 16, scrambled_table(24, seed=61))
    expected = tiny.hf_logits(seq)[7:].argmax(-1)
    got = torch.stack(steps).argmax(-1)
    assert torch.isfinite(torch.stack(steps)).all()
    assert (got == expected).float().mean().item() >= 0.8


def test_kv_bytes_per_token_and_budget() -> None:
    config = Qwen3ModelConfig(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128,
    )
    # Qwen3-0.6B in bf16: K and V, 28 layers, 8 heads of 128 -> 112 KiB per token
    assert TorchModelRunner.kv_bytes_per_token(config, torch.bfloat16) == 2 * 28 * 8 * 128 * 2
    assert TorchModelRunner.kv_bytes_per_token(config, "float32") == 2 * 28 * 8 * 128 * 4
    assert TorchModelRunner.num_blocks_for_budget(config, "bfloat16", block_size=16, budget_gib=1.75) == 1024


def test_malformed_entries_are_rejected(tiny: Case) -> None:
    runner = tiny.runner
    with pytest.raises(ValueError, match="block table"):
        runner.forward([BatchEntry(tokens(9, seed=1), 0, [1, 2], need_logits=True)])
    with pytest.raises(ValueError, match="block id"):
        runner.forward([BatchEntry([1, 2], 0, [NUM_BLOCKS], need_logits=True)])
    with pytest.raises(ValueError, match="no tokens"):
        runner.forward([BatchEntry([], 0, [0], need_logits=True)])
