"""Sampler: greedy, truncation, temperature, penalties, logit bias, seeds and logprobs."""

from __future__ import annotations

import pytest
import torch

from qwen3_api.engine.protocols import SampledToken, SamplingRow
from qwen3_api.engine.sampling import SamplingParams
from qwen3_api.executors.sampler import NUCLEUS_CANDIDATES, Sampler

VOCAB = 151936


def row(
    request_id: str = "r", prompt: list[int] | None = None, output: list[int] | None = None, **params
) -> SamplingRow:
    return SamplingRow(request_id, SamplingParams(**params), prompt or [], output or [])


def random_logits(batch: int, vocab: int = VOCAB, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * scale


def token_ids(tokens: list[SampledToken]) -> list[int]:
    return [t.token_id for t in tokens]


def test_greedy_is_argmax_and_logits_untouched() -> None:
    logits = random_logits(4)
    before = logits.clone()
    rows = [row(f"r{i}", temperature=0.0, presence_penalty=0.5, output=[1, 2]) for i in range(4)]
    rows[0] = row("r0", temperature=0.0)
    tokens = Sampler().sample(logits, rows)
    assert token_ids(tokens)[0] == logits[0].argmax().item()
    assert torch.equal(logits, before)
    assert all(t.logprob is None for t in tokens)
    plain = Sampler().sample(logits, [row(f"r{i}", temperature=0.0) for i in range(4)])
    assert token_ids(plain) == logits.argmax(dim=-1).tolist()


def test_greedy_ties_take_the_first_index_as_torch_does() -> None:
    logits = torch.zeros(3, 50)
    logits[0, [7, 3, 40]] = 2.0  # a three-way tie: index 3 comes first
    logits[1, [49, 0]] = 1.0
    logits[2] = -1.0  # every column ties
    tokens = Sampler().sample(logits, [row(f"r{i}", temperature=0.0) for i in range(3)])
    assert token_ids(tokens) == [3, 0, 0] == logits.argmax(dim=-1).tolist()


def test_wrong_shape_is_rejected() -> None:
    with pytest.raises(ValueError):
        Sampler().sample(random_logits(2, 10), [row()])


@pytest.mark.parametrize(
    "params", [{"top_k": 1}, {"top_p": 1e-6}, {"top_k": 5, "top_p": 1e-6}, {"min_p": 1.0}]
)
def test_extreme_truncation_equals_greedy(params: dict) -> None:
    logits = random_logits(8, seed=1)
    sampler = Sampler(seed=0)
    for _ in range(3):
        rows = [row(f"r{i}", temperature=1.5, **params) for i in range(8)]
        assert token_ids(sampler.sample(logits, rows)) == logits.argmax(dim=-1).tolist()


def test_top_k_keeps_only_the_k_best() -> None:
    logits = random_logits(
        1, vocab=5000, seed=2, scale=0.1
    )  # nearly flat: without top_k any token could come
    allowed = set(logits[0].topk(5).indices.tolist())
    rows = [row(f"r{i}", temperature=1.0, top_k=5) for i in range(200)]
    drawn = set(token_ids(Sampler(seed=0).sample(logits.expand(200, -1), rows)))
    assert drawn == allowed


# The nucleus fits the first candidates (50), needs a sort of the vocabulary (4096: the second candidate count
# covers it all), or fits the second candidates (32768: nucleus ~5500).
@pytest.mark.parametrize("vocab", [50, 4 * NUCLEUS_CANDIDATES[0], 2 * NUCLEUS_CANDIDATES[1]])
def test_top_p_samples_only_from_the_nucleus(vocab: int) -> None:
    logits = torch.linspace(2.0, -2.0, vocab).unsqueeze(0)  # token 0 most likely, descending
    probs = torch.softmax(logits[0], dim=-1)
    mass_before = probs.cumsum(0) - probs
    nucleus = int((mass_before < 0.5).sum())  # smallest prefix holding half the mass
    assert 1 < nucleus < vocab
    sampler = Sampler(seed=0)
    batch = 64
    drawn = torch.tensor(
        [
            token_ids(
                sampler.sample(logits.expand(batch, -1), [row(f"r{i}", top_p=0.5) for i in range(batch)])
            )
            for _ in range(20)
        ]
    )
    assert int(drawn.max()) < nucleus
    assert int(drawn.max()) >= nucleus * 0.8  # the whole nucleus is reachable, not just its head


def test_min_p_drops_unlikely_tokens_and_keeps_proportions() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().unsqueeze(0).expand(4000, -1)
    rows = [row(f"r{i}", min_p=0.35) for i in range(4000)]  # keeps p >= 0.175: tokens 0 and 1
    counts = torch.bincount(torch.tensor(token_ids(Sampler(seed=0).sample(logits, rows))), minlength=4)
    assert counts[2:].sum() == 0
    assert abs(counts[0].item() / 4000 - 0.5 / 0.8) < 0.03


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
def test_temperature_shapes_the_distribution(temperature: float) -> None:
    logits = torch.tensor([1.0, 0.5, 0.0, -0.5, -1.5])
    expected = torch.softmax(logits / temperature, dim=-1)
    batch, steps = 2000, 10
    sampler = Sampler(seed=0)
    rows = [row(f"r{i}", temperature=temperature) for i in range(batch)]
    drawn = [t for _ in range(steps) for t in token_ids(sampler.sample(logits.expand(batch, -1), rows))]
    observed = torch.bincount(torch.tensor(drawn), minlength=5).float() / len(drawn)
    # 20000 draws: the standard error of each frequency is <= 0.0036, so 0.015 is ~4 sigma.
    assert torch.allclose(observed, expected, atol=0.015)
    # The check can fail: the distribution at another temperature is far outside the tolerance.
    other = torch.softmax(logits / (temperature + 0.5), dim=-1)
    assert not torch.allclose(observed, other, atol=0.015)


# Penalties on a small vocabulary, read back through the logprobs (log_softmax of the processed logits).
BASE = torch.tensor([2.0, -1.0, 0.5, -0.5, 1.0, 0.0, 3.0, -2.0])
PROMPT = [0, 1]
OUTPUT = [2, 2, 3]


def processed_logprobs(**params) -> torch.Tensor:
    r = row(prompt=PROMPT, output=OUTPUT, temperature=0.0, logprobs=8, **params)
    top = Sampler().sample(BASE.unsqueeze(0).clone(), [r])[0].logprob.top
    result = torch.empty(8)
    for token_id, logprob in top:
        result[token_id] = logprob
    return result


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        # prompt tokens 0, 1 and output tokens 2, 3 are penalized: positive / 2, negative * 2
        ({"repetition_penalty": 2.0}, [1.0, -2.0, 0.25, -1.0, 1.0, 0.0, 3.0, -2.0]),
        # output tokens only, once each
        ({"presence_penalty": 0.5}, [2.0, -1.0, 0.0, -1.0, 1.0, 0.0, 3.0, -2.0]),
        # output tokens only, per occurrence (token 2 twice)
        ({"frequency_penalty": 0.25}, [2.0, -1.0, 0.0, -0.75, 1.0, 0.0, 3.0, -2.0]),
        (
            {"repetition_penalty": 2.0, "presence_penalty": 0.5, "frequency_penalty": 0.25},
            [1.0, -2.0, 0.25 - 1.0, -1.0 - 0.75, 1.0, 0.0, 3.0, -2.0],
        ),
        ({"frequency_penalty": -1.0}, [2.0, -1.0, 2.5, 0.5, 1.0, 0.0, 3.0, -2.0]),
        ({"logit_bias": ((5, 2.0), (7, -1.0))}, [2.0, -1.0, 0.5, -0.5, 1.0, 2.0, 3.0, -3.0]),
    ],
)
def test_penalties_and_bias_change_exactly_the_expected_logits(params: dict, expected: list[float]) -> None:
    assert torch.allclose(
        processed_logprobs(**params), torch.log_softmax(torch.tensor(expected), dim=-1), atol=1e-5
    )


def test_penalized_rows_do_not_affect_their_neighbours() -> None:
    logits = random_logits(3, vocab=100, seed=3)
    rows = [
        row("a", temperature=0.0, logprobs=0),
        row("b", temperature=0.0, logprobs=0, output=[int(logits[1].argmax())], presence_penalty=2.0),
        row("c", temperature=0.0, logprobs=0),
    ]
    tokens = Sampler().sample(logits, rows)
    for i in (0, 2):
        assert tokens[i].token_id == logits[i].argmax().item()
        assert tokens[i].logprob.logprob == pytest.approx(
            torch.log_softmax(logits[i], -1).max().item(), abs=1e-6
        )


def test_logit_bias_forces_a_token() -> None:
    logits = random_logits(2, seed=4)
    sampler = Sampler(seed=0)
    rows = [
        row("sampled", temperature=1.0, logit_bias=((12345, 100.0),)),
        row("greedy", temperature=0.0, logit_bias=((int(logits[1].argmax()), -100.0), (VOCAB + 5, 100.0))),
    ]
    for _ in range(5):
        tokens = token_ids(sampler.sample(logits, rows))
        assert tokens[0] == 12345
        assert (
            tokens[1] == logits[1].topk(2).indices[1].item()
        )  # the best is pushed down; the bad id is skipped


SEEDED_VARIANTS = [
    {"temperature": 1.0},
    {"temperature": 0.8, "top_p": 0.9},
    {"temperature": 1.2, "top_k": 40, "min_p": 0.01},
    {"temperature": 1.0, "presence_penalty": 1.0, "repetition_penalty": 1.3},
]


@pytest.mark.parametrize("params", SEEDED_VARIANTS)
def test_seeded_row_ignores_batch_composition_and_position(params: dict) -> None:
    steps = 4
    step_logits = [
        random_logits(1, seed=100 + s, scale=1.0)[0] for s in range(steps)
    ]  # the seeded row's logits

    def run(batch_size: int, position: int, sampler_seed: int) -> list[int]:
        sampler = Sampler(seed=sampler_seed)
        outputs: list[int] = []
        for step in range(steps):
            others = random_logits(batch_size, seed=1000 * batch_size + step + sampler_seed, scale=1.0)
            others[position] = step_logits[step]
            rows = [
                [
                    row(f"other{i}", temperature=0.7, top_p=0.95),
                    row(f"other{i}", temperature=0.0),
                    row(f"other{i}", temperature=1.0, seed=999, top_k=10),
                    row(f"other{i}", temperature=1.0, frequency_penalty=0.5, output=[1, 2, 3]),
                ][i % 4]
                for i in range(batch_size)
            ]
            rows[position] = row("seeded", prompt=[5, 6], output=list(outputs), seed=42, logprobs=2, **params)
            outputs.append(sampler.sample(others, rows)[position].token_id)
        return outputs

    alone = run(1, 0, sampler_seed=0)
    assert run(5, 3, sampler_seed=1) == alone
    assert run(6, 0, sampler_seed=2) == alone


def test_different_seeds_differ_and_release_restarts_the_stream() -> None:
    logits = random_logits(1, seed=5, scale=0.5)
    sampler = Sampler()

    def draw(request_id: str, seed: int) -> list[int]:
        return [sampler.sample(logits, [row(request_id, seed=seed)])[0].token_id for _ in range(8)]

    first = draw("a", 1)
    assert draw("b", 2) != first
    assert len(set(first)) > 1  # the generator advances between steps instead of being reseeded
    sampler.release(["a"])
    assert draw("a", 1) == first


def test_logprobs_are_sorted_log_softmax_before_temperature() -> None:
    logits = random_logits(3, seed=6)
    rows = [
        row("a", temperature=0.0, logprobs=5),
        row("b", temperature=0.3, top_k=20, logprobs=20),
        row("c", temperature=1.0, logprobs=0),
    ]
    tokens = Sampler(seed=0).sample(logits, rows)
    expected = torch.log_softmax(logits, dim=-1)
    for i, (token, r) in enumerate(zip(tokens, rows)):
        assert token.logprob is not None
        assert token.logprob.token_id == token.token_id
        assert token.logprob.logprob == pytest.approx(expected[i, token.token_id].item(), abs=1e-5)
        assert len(token.logprob.top) == r.params.logprobs
        values = [lp for _, lp in token.logprob.top]
        assert values == sorted(values, reverse=True)
        best = expected[i].topk(max(r.params.logprobs, 1))
        assert [t for t, _ in token.logprob.top] == best.indices.tolist()[: r.params.logprobs]
        for token_id, logprob in token.logprob.top:
            assert logprob == pytest.approx(expected[i, token_id].item(), abs=1e-5)
    assert tokens[0].logprob.top[0][0] == tokens[0].token_id
