"""RequestState: a step's tokens become the caller's update (text, usage, the cut at a stop string, the finish)."""

from __future__ import annotations

import asyncio

import pytest
import transformers

from qwen3_api.demo_models.checkpoints import cached_test_model
from qwen3_api.engine.detokenize import IncrementalDetokenizer
from qwen3_api.engine.outputs import CoreOutput, FinishReason, TokenLogprob
from qwen3_api.engine.request_state import RequestState
from qwen3_api.engine.sampling import SamplingParams


@pytest.fixture(scope="module")
def tokenizer() -> transformers.PreTrainedTokenizerBase:
    return transformers.AutoTokenizer.from_pretrained(cached_test_model("tiny"))


def state_for(tokenizer, stop: tuple[str, ...] = ()) -> RequestState:
    prompt = tokenizer.encode("Say:")
    return RequestState(
        request_id="r",
        params=SamplingParams(max_tokens=64),
        detokenizer=IncrementalDetokenizer(tokenizer, prompt, stop=stop),
        queue=asyncio.Queue(),
        num_prompt_tokens=len(prompt),
    )


def core(request_id: str, token_ids: list[int], **kwargs) -> CoreOutput:
    logprobs = [TokenLogprob(t, -float(i)) for i, t in enumerate(token_ids)]
    return CoreOutput(request_id, list(token_ids), logprobs, **kwargs)


def test_stop_string_cuts_tokens_and_logprobs_after_the_completing_token(tokenizer) -> None:
    state = state_for(tokenizer, stop=("world",))
    tokens = tokenizer.encode(" hello world and more words")
    world_end = next(i for i in range(1, len(tokens) + 1) if "world" in tokenizer.decode(tokens[:i]))
    update, stopped = state.advance(core("r", tokens, num_cached_tokens=2))
    assert stopped  # the core is still running it: the caller must abort it
    assert update.finished and update.finish_reason is FinishReason.STOP and update.stop_reason == "world"
    assert update.new_text == " hello "
    assert update.new_token_ids == tokens[:world_end]
    assert [lp.token_id for lp in update.logprobs or []] == tokens[:world_end]
    assert update.completion_tokens == world_end and update.cached_tokens == 2


def test_updates_count_usage_and_the_finish_flushes_what_was_held_back(tokenizer) -> None:
    state = state_for(tokenizer)
    tokens = tokenizer.encode("你好，世界")
    texts, completion = [], []
    for i, token in enumerate(tokens):
        last = i == len(tokens) - 1
        update, stopped = state.advance(
            core("r", [token], finish_reason=FinishReason.LENGTH if last else None, num_cached_tokens=i)
        )
        assert not stopped and update.finished == last and update.new_token_ids == [token]
        texts.append(update.new_text)
        completion.append(update.completion_tokens)
    assert "".join(texts) == "你好，世界"
    assert completion == list(range(1, len(tokens) + 1))
    assert update.finish_reason is FinishReason.LENGTH and update.cached_tokens == len(tokens) - 1
    assert update.prompt_tokens == state.num_prompt_tokens


def test_end_token_finish_names_the_token(tokenizer) -> None:
    state = state_for(tokenizer)
    update, stopped = state.advance(core("r", [], finish_reason=FinishReason.STOP, stop_token_id=151645))
    assert not stopped and update.finished and update.stop_reason == 151645 and update.new_text == ""
