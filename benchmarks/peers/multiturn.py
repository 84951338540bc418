"""A multi-turn chat workload: each conversation's next turn extends its previous prompt.

`conversations` clients run at once, each sending its turns one after another over streamed OpenAI completions:
turn 1 is a fresh `first_tokens`-token prompt; every later prompt is the previous prompt, the text the server
answered, and `turn_tokens` new words, as a chat client resends the growing history. A server that keeps the KV of a
conversation's previous turn (our prefix cache; llama-server's per-slot `cache_prompt`) prefills only the new part.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from qwen3_api.bench.apis import ApiKind, make_api
from qwen3_api.bench.loadgen import WARMUP_SEED, LoadGenerator
from qwen3_api.bench.metrics import BenchResult, RequestOutput, summarize
from qwen3_api.bench.prompts import PromptBuilder


@dataclass(frozen=True)
class ChatWorkload:
    """The shape of the multi-turn workload."""

    conversations: int = 4
    turns: int = 4
    first_tokens: int = 256
    turn_tokens: int = 32
    output_tokens: int = 32
    seed: int = 77

    def __post_init__(self) -> None:
        if min(self.conversations, self.turns, self.first_tokens, self.turn_tokens, self.output_tokens) < 1:
            raise ValueError("every multi-turn workload size must be at least 1")

    def new_words(self, builder: PromptBuilder, conversation: int, turn: int) -> str:
        """The fresh part of a conversation's turn (the whole prompt of turn 0)."""
        tokens = self.first_tokens if turn == 0 else self.turn_tokens
        return builder.prompt(tokens, self.seed * 1_000_003 + conversation * 1_000 + turn)


async def _conversation(generator: LoadGenerator, builder: PromptBuilder, workload: ChatWorkload,
                        index: int) -> list[RequestOutput]:  # fmt: skip
    outputs: list[RequestOutput] = []
    prompt = ""
    for turn in range(workload.turns):
        prompt += workload.new_words(builder, index, turn)
        output = await generator.send(prompt, workload.output_tokens)
        outputs.append(output)
        if not output.success:
            break  # the history would be wrong from here on
        prompt += output.text
    return outputs


async def run_chat(url: str, model: str | None, builder: PromptBuilder, workload: ChatWorkload,
                   timeout_s: float = 1800.0, after_warmup: Callable[[], object] | None = None,
                   ) -> BenchResult:  # fmt: skip
    """Run every conversation at once against `url`; one summary over all turns (concurrency = conversations).
    `after_warmup` is called between the warm-up request and the conversations."""
    api = make_api(ApiKind.OPENAI_COMPLETIONS, model)
    async with LoadGenerator(url, api, timeout_s=timeout_s, max_connections=workload.conversations + 2,
                             count_tokens=builder) as generator:  # fmt: skip
        await generator.prepare(builder.prompt(workload.first_tokens, WARMUP_SEED + workload.seed), 4)
        if after_warmup is not None:
            after_warmup()
        started = time.perf_counter()
        per_conversation = await asyncio.gather(
            *(_conversation(generator, builder, workload, i) for i in range(workload.conversations))
        )
        duration = time.perf_counter() - started
        notes = list(generator.notes)
    outputs = [o for conversation in per_conversation for o in conversation]
    notes.append(f"{workload.conversations} conversations x {workload.turns} turns; turn 1 {workload.first_tokens} "
                 f"tokens, each later turn the history + {workload.turn_tokens} new tokens")  # fmt: skip
    return summarize(outputs, duration, api=api.kind.value, url=url, model=model, concurrency=workload.conversations,
                     prompt_tokens_target=workload.first_tokens, output_tokens_target=workload.output_tokens,
                     notes=notes)  # fmt: skip
