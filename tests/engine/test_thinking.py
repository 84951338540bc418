"""Thinking budgets on the engine: a model forced to think forever still ends its thought and goes on answering."""

from __future__ import annotations

import itertools

import pytest
import torch

from qwen3_api.config import Settings
from qwen3_api.engine.llm_engine import LLMEngine
from qwen3_api.engine.sampling import SamplingParams
from qwen3_api.engine.structured import StructuredOutput
from qwen3_api.engine.thinking import ThinkingBudget, ThoughtTracker
from qwen3_api.engine.tokenizer import Tokenizer
from qwen3_api.errors import InvalidRequestError
from qwen3_api.runtime.torch_engine import build_llm_engine

THINK_START, THINK_END = 151667, 151668
NEVER_CLOSE = ((THINK_END, -100.0),)  # the model alone would never end its thought


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> LLMEngine:  # type: ignore[no-untyped-def]
    settings = Settings(model=str(tiny_model_dir), max_model_len=512, kv_cache_memory=0.05)
    return build_llm_engine(settings, tiny_model_dir, torch.device("cpu"), torch.float32, Tokenizer(tiny_model_dir), 512)


def run(engine: LLMEngine, requests: dict[str, SamplingParams], prompt: list[int]) -> dict[str, list[int]]:
    """Each request's output tokens (request ids made unique: the engine reports finishes a step late)."""
    prefix = f"{next(_RUNS)}-"
    for name, params in requests.items():
        engine.add_request(prefix + name, prompt, params)
    tokens: dict[str, list[int]] = {name: [] for name in requests}
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens[out.request_id.removeprefix(prefix)] += out.new_token_ids
    return tokens


_RUNS = itertools.count()


def budget(tokens: int, starts_open: bool = True) -> ThinkingBudget:
    return ThinkingBudget(tokens, THINK_START, THINK_END, starts_open=starts_open)


def forced_thinker(max_tokens: int = 20, **extra: object) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True, logit_bias=NEVER_CLOSE, **extra)  # type: ignore[arg-type]


PROMPT = [151644, 872, 198, 9707, 151645, 198, 151644, 77091, 198, THINK_START, 198]  # ends inside "<think>\n"


def test_without_a_budget_the_forced_thinker_never_ends_its_thought(engine: LLMEngine) -> None:
    out = run(engine, {"a": forced_thinker()}, PROMPT)["a"]
    assert len(out) == 20 and THINK_END not in out


@pytest.mark.parametrize("tokens", [0, 1, 5])
def test_spent_budget_forces_think_end_then_the_answer_goes_on(engine: LLMEngine, tokens: int) -> None:
    free = run(engine, {"free": forced_thinker()}, PROMPT)["free"]
    out = run(engine, {"a": forced_thinker(thinking=budget(tokens))}, PROMPT)["a"]
    assert out[:tokens] == free[:tokens]  # the thought itself is untouched
    assert out[tokens] == THINK_END and out.count(THINK_END) == 1
    assert len(out) == 20  # the answer continues after `</think>`


def test_thought_opened_by_the_model_is_counted_from_its_think_start(engine: LLMEngine) -> None:
    # The prompt leaves the choice to the model (hybrid Qwen3); the bias makes it open a thought and stay in it.
    prompt = PROMPT[:-2]
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True,
                            logit_bias=((THINK_START, 100.0), *NEVER_CLOSE), thinking=budget(3, starts_open=False))  # fmt: skip
    out = run(engine, {"a": params}, prompt)["a"]
    assert out[:4] == [THINK_START] * 4 and out[4] == THINK_END
    assert out[5:] == [THINK_START] * 7  # after the thought a think-start is ordinary output: no second budget


def test_budgets_in_one_batch_are_per_request(engine: LLMEngine) -> None:
    alone = run(engine, {"plain": forced_thinker()}, PROMPT)["plain"]
    outs = run(
        engine,
        {"two": forced_thinker(thinking=budget(2)), "seven": forced_thinker(thinking=budget(7)), "plain": forced_thinker()},
        PROMPT,
    )
    assert outs["two"].index(THINK_END) == 2 and outs["seven"].index(THINK_END) == 7
    assert outs["plain"] == alone


def test_tracker_follows_one_thought() -> None:
    tracker = ThoughtTracker(budget(2, starts_open=False))
    assert not tracker.must_end
    for token in (THINK_START, 10, 11):
        tracker.accept(token)
    assert tracker.must_end and tracker.spent == 2
    tracker.accept(THINK_END)
    assert not tracker.must_end and tracker.closed
    tracker.accept(THINK_START)
    assert not tracker.in_thought


def test_invalid_budgets_are_refused_by_name() -> None:
    with pytest.raises(InvalidRequestError) as info:
        budget(-1)
    assert info.value.param == "thinking_budget"
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(thinking=budget(4), structured=StructuredOutput(kind="json_object"))
    assert info.value.param == "thinking_budget"
