"""Speculative decoding (`--speculative ngram`) on the llama.cpp engine: greedy and seeded output unchanged,
drafts accepted on a prompt the model copies from, rejected drafts' cells gone from llama.cpp, grammar rows and
full batches left alone. On the real SmolLM2-135M-Instruct GGUF and on a random-weight test GGUF."""

from __future__ import annotations

import functools
import random
from pathlib import Path

import pytest
import torch

from qwen3_api.config import Settings
from qwen3_api.engine.llm_engine import LLMEngine
from qwen3_api.engine.protocols import BatchEntry
from qwen3_api.engine.sampling import SamplingParams
from qwen3_api.engine.structured import StructuredOutput
from qwen3_api.engine.tokenizer import Tokenizer
from tests.real_model import smollm2_gguf

pytest.importorskip("llama_cpp")
from qwen3_api.executors.llamacpp_runner import LlamaCppModelRunner  # noqa: E402
from qwen3_api.runtime.llamacpp_engine import build_llamacpp_engine  # noqa: E402

MAX_MODEL_LEN = 1024
CODE = (
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonnaci(n - 2)\n\n"
    "for i in range(10):\n    print(i, fibonacci(i))\n"
)
COPY_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Fix the typo in this code and return the whole code:\n\n" + CODE},
]


@functools.cache
def smollm2() -> tuple[Path, Tokenizer]:
    path = smollm2_gguf()
    return path, Tokenizer.from_gguf(path)


@functools.cache
def copy_prompt() -> list[int]:
    _, tokenizer = smollm2()
    return tokenizer.encode(tokenizer.render_chat(COPY_MESSAGES))


def engine_for(path: Path, tokenizer: Tokenizer, speculative: str, **overrides: object) -> LLMEngine:
    # One llama.cpp thread: on a busy machine two spin-waiting threads slow each other down many times over.
    settings = Settings(model="unused", max_num_seqs=4, speculative=speculative, kv_cache_memory=0.05, llamacpp_threads=1,
                        **overrides)  # type: ignore[arg-type]  # fmt: skip
    return build_llamacpp_engine(settings, path, tokenizer, MAX_MODEL_LEN)


def run(engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]]) -> dict[str, list[int]]:
    for request_id, (prompt, params) in requests.items():
        engine.add_request(request_id, prompt, params)
    tokens: dict[str, list[int]] = {request_id: [] for request_id in requests}
    while engine.has_unfinished_requests():
        for out in engine.step():
            assert out.error is None, out.error
            tokens[out.request_id].extend(out.new_token_ids)
    return tokens


def cells_held(engine: LLMEngine, request_id: str) -> int:
    """Positions llama.cpp holds K/V for in the sequence `request_id` had (it is retained after finishing)."""
    runner = engine.runner
    assert isinstance(runner, LlamaCppModelRunner)
    return sum(
        int(runner._lib.llama_memory_seq_pos_max(runner._memory, seq_id)) + 1  # -1 when empty
        for seq_id in range(runner.max_num_seqs)
    )


@pytest.mark.parametrize("unified", [False, True], ids=["per-sequence-kv", "shared-pool"])
def test_greedy_copy_output_is_unchanged_and_drafts_are_accepted(unified: bool) -> None:
    path, tokenizer = smollm2()
    params = SamplingParams(max_tokens=120, temperature=0)
    plain = engine_for(path, tokenizer, "off", llamacpp_kv_unified=unified)
    expected = run(plain, {"a": (copy_prompt(), params)})["a"]
    spec = engine_for(path, tokenizer, "ngram", llamacpp_kv_unified=unified)
    got = run(spec, {"a": (copy_prompt(), params)})["a"]
    assert got == expected
    assert "fibonacci(n - 2)" in tokenizer.decode(got)  # the model copies the code (and fixes the typo)
    stats = spec.stats()
    assert stats["spec_decode_accepted_tokens"] > 0.5 * stats["spec_decode_draft_tokens"] > 0
    assert spec.num_steps < 0.6 * plain.num_steps  # fewer forwards for the same tokens
    # The finished sequence's cells are exactly prompt + output less the last token (never computed): no cell
    # of a rejected draft is left in llama.cpp, and the slot's record agrees (a follow-up prompt reuses it all).
    held = len(copy_prompt()) + len(got) - 1
    assert cells_held(spec, "a") == cells_held(plain, "a") == held
    follow_up = copy_prompt() + got + [tokenizer.encode("\n")[0]]
    assert spec.runner.lookup_prefix("probe", follow_up) == held  # type: ignore[attr-defined]


def test_verify_logits_are_the_one_token_decode_logits() -> None:
    """The rows of a multi-token verify decode are bit-identical to decoding those tokens one per step
    (measured in both KV layouts on this model; the engine's greedy equality does not depend on it)."""
    path, _ = smollm2()
    rng = random.Random(0)
    prompt = [rng.randrange(100, 40000) for _ in range(40)]
    follow = [rng.randrange(100, 40000) for _ in range(6)]
    for unified in (False, True):
        runner = LlamaCppModelRunner(path, max_num_seqs=2, max_model_len=256, n_batch=128, kv_unified=unified, n_threads=1,
                                     flash_attention=unified, max_draft_tokens=5)  # fmt: skip
        runner.forward([BatchEntry(prompt, 0, [], True, "one")])
        one_by_one = torch.cat([runner.forward([BatchEntry([t], 40 + i, [], True, "one")]) for i, t in enumerate(follow)])
        runner.release(["one"])
        runner.forward([BatchEntry(prompt, 0, [], True, "verify")])
        verified = runner.forward([BatchEntry(follow, 40, [], True, "verify", num_draft_tokens=5)])
        assert verified.shape == one_by_one.shape == (6, runner.vocab_size)
        assert torch.equal(verified, one_by_one), f"unified={unified}"
        # Rolling back drops the cells: position 43 on is gone, and the slot continues from there.
        runner.rollback("verify", 43)
        assert int(runner._lib.llama_memory_seq_pos_max(runner._memory, runner.slot_of("verify"))) == 42
        again = runner.forward([BatchEntry(follow[3:4], 43, [], True, "verify")])
        assert torch.equal(again[0], one_by_one[3])
        runner.close()


def test_seeded_sampling_is_unchanged_on_per_sequence_kv() -> None:
    """Sampled rows speculate too: each kept token is drawn from its position's logits with the request's
    generator, one draw per token, so a seeded request gives the same tokens with and without drafts."""
    path, tokenizer = smollm2()
    params = SamplingParams(max_tokens=80, temperature=0.7, top_p=0.9, top_k=40, seed=11, repetition_penalty=1.05)
    expected = run(engine_for(path, tokenizer, "off", llamacpp_kv_unified=False), {"a": (copy_prompt(), params)})
    spec = engine_for(path, tokenizer, "ngram", llamacpp_kv_unified=False)
    assert run(spec, {"a": (copy_prompt(), params)}) == expected
    assert spec.stats()["spec_decode_accepted_tokens"] > 0


def test_full_batches_decode_without_drafts() -> None:
    path, tokenizer = smollm2()
    params = SamplingParams(max_tokens=24, temperature=0)
    requests = {f"r{i}": (copy_prompt(), params) for i in range(3)}
    spec = engine_for(path, tokenizer, "ngram", speculative_max_batch=2, llamacpp_kv_unified=False)
    got = run(spec, requests)
    assert got == run(engine_for(path, tokenizer, "off", llamacpp_kv_unified=False), requests)
    stats = spec.stats()
    # Three sequences decode side by side the whole time: every decode step is a full batch, none speculates.
    assert stats["spec_decode_full_batch_steps"] >= 20 and stats["spec_decode_draft_tokens"] == 0


def test_grammar_rows_do_not_speculate_and_others_beside_them_do() -> None:
    path, tokenizer = smollm2()
    json_params = SamplingParams(max_tokens=30, temperature=0, structured=StructuredOutput("json_object"))
    plain_params = SamplingParams(max_tokens=60, temperature=0)
    plain = engine_for(path, tokenizer, "off", llamacpp_kv_unified=False)
    plain.prepare_grammar()
    expected = run(plain, {"json": (copy_prompt(), json_params)})["json"]
    spec = engine_for(path, tokenizer, "ngram", llamacpp_kv_unified=False)
    spec.prepare_grammar()
    assert run(spec, {"json": (copy_prompt(), json_params)})["json"] == expected
    assert spec.stats()["spec_decode_draft_tokens"] == 0  # alone, the grammar row never got a draft
    got = run(spec, {"json-2": (copy_prompt(), json_params), "free": (copy_prompt(), plain_params)})
    # Beside a row that speculates, the grammar row's tokens are still its own (its logits come from its one
    # token; the free row's verify decode does not change them on per-sequence KV).
    assert got["json-2"] == expected
    assert spec.stats()["spec_decode_accepted_tokens"] > 0  # the free row did speculate


def test_max_tokens_and_end_tokens_end_where_they_would() -> None:
    path, tokenizer = smollm2()
    for max_tokens in (1, 2, 7, 33):
        params = SamplingParams(max_tokens=max_tokens, temperature=0)
        got = run(engine_for(path, tokenizer, "ngram"), {"a": (copy_prompt(), params)})["a"]
        assert got == run(engine_for(path, tokenizer, "off"), {"a": (copy_prompt(), params)})["a"]
        assert len(got) == max_tokens
    # Ended by <|im_end|> well before the limit: the end token is the last token, once.
    params = SamplingParams(max_tokens=400, temperature=0)
    got = run(engine_for(path, tokenizer, "ngram"), {"a": (copy_prompt(), params)})["a"]
    assert got[-1] in tokenizer.eos_token_ids and len(got) < 400
    assert not set(got[:-1]) & set(tokenizer.eos_token_ids)


def test_random_weight_gguf_greedy_is_unchanged() -> None:
    """A random-weight Qwen3-shaped GGUF (the test models' tokenizer) on a prompt that repeats itself: the model
    loops, so drafts from its own output get accepted; greedy output is the plain engine's."""
    from qwen3_api.demo_models.checkpoints import cached_test_model
    from qwen3_api.demo_models.gguf import cached_test_gguf

    path = Path(cached_test_gguf("Q8_0", shape="tiny", init_std=0.5))
    tokenizer = Tokenizer(cached_test_model(shape="tiny", init_std=0.5))
    rng = random.Random(3)
    pattern = [rng.randrange(0, 151000) for _ in range(12)]
    prompt = pattern * 4
    params = SamplingParams(max_tokens=64, temperature=0, ignore_eos=True)
    spec = engine_for(path, tokenizer, "ngram", llamacpp_kv_unified=False)
    got = run(spec, {"a": (prompt, params)})
    assert got == run(engine_for(path, tokenizer, "off", llamacpp_kv_unified=False), {"a": (prompt, params)})
    assert spec.stats()["spec_decode_draft_tokens"] > 0
