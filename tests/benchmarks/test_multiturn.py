"""The multi-turn workload against a real server: every turn resends the conversation so far, plus new words."""

from __future__ import annotations

import asyncio

from cpu_peers import served_model
from peers.multiturn import ChatWorkload, _conversation, run_chat

from qwen3_api.bench.apis import ApiKind, make_api
from qwen3_api.bench.loadgen import LoadGenerator
from qwen3_api.bench.prompts import PromptBuilder
from tests.conftest import ServerPool


async def one_conversation(url: str, builder: PromptBuilder, workload: ChatWorkload) -> list[int | None]:
    async with LoadGenerator(url, make_api(ApiKind.OPENAI_COMPLETIONS, served_model(url)), count_tokens=builder) as generator:
        await generator.prepare(builder.prompt(8, 1), 2)
        outputs = await _conversation(generator, builder, workload, 0)
    assert all(o.success and o.output_tokens == workload.output_tokens for o in outputs), outputs
    return [o.prompt_tokens for o in outputs]


def test_each_turn_extends_the_previous_prompt(server_pool: ServerPool, tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    server = server_pool.get("test:tiny:gguf=F32", "--backend", "llamacpp")
    builder = PromptBuilder.from_tokenizer_dir(tiny_model_dir)
    workload = ChatWorkload(conversations=1, turns=3, first_tokens=16, turn_tokens=8, output_tokens=4)
    lengths = asyncio.run(one_conversation(server.url, builder, workload))
    assert lengths[0] == 16
    # Each later prompt = the previous one + the answer (re-tokenized, at least a token) + 8 new tokens.
    assert all(later > earlier + 8 for earlier, later in zip(lengths, lengths[1:])), lengths


def test_run_chat_summarizes_every_turn_of_every_conversation(server_pool: ServerPool, tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    server = server_pool.get("test:tiny:gguf=F32", "--backend", "llamacpp")
    builder = PromptBuilder.from_tokenizer_dir(tiny_model_dir)
    workload = ChatWorkload(conversations=2, turns=2, first_tokens=16, turn_tokens=8, output_tokens=4)
    result = asyncio.run(run_chat(server.url, served_model(server.url), builder, workload))
    assert (result.completed, result.failed, result.concurrency) == (4, 0, 2)
    assert result.total_output_tokens == 16
    assert result.total_input_tokens > 2 * (16 + 16 + 8)  # second turns carry the first turns and their answers
    assert result.ttft_ms.count == 4 and result.ttft_ms.p50 > 0
