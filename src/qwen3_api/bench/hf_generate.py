"""The in-process baseline: HF transformers `generate`, one request at a time, timed token by token."""

from __future__ import annotations

import time
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

from qwen3_api.bench.metrics import BenchResult, RequestOutput, summarize


class _TokenTimer:
    """A `generate` streamer that records when each new token arrives (the first `put` is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def run_hf_generate(
    model_dir: Path | str,
    dtype: str,
    prompts: Sequence[str],
    output_tokens: int,
    num_threads: int | None = None,
) -> BenchResult:
    """Greedy `generate` of exactly `output_tokens` tokens for each prompt in turn (after one warm-up run).

    `min_new_tokens` equal to `max_new_tokens` makes generation ignore end tokens, as the servers are asked to.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if num_threads is not None:
        torch.set_num_threads(num_threads)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, dtype)).eval()
    # Greedy; the sampling fields of the model's generation_config are cleared so they raise no warnings.
    kwargs: dict[str, Any] = {
        "do_sample": False, "temperature": None, "top_p": None, "top_k": None,
        "pad_token_id": tokenizer.pad_token_id or tokenizer.eos_token_id,
    }  # fmt: skip

    def one(prompt: str, new_tokens: int) -> RequestOutput:
        encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        timer = _TokenTimer()
        started = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                **encoded, **kwargs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, streamer=timer
            )
        ended = time.perf_counter()
        times = timer.times
        return RequestOutput(
            success=True, prompt_tokens=int(encoded["input_ids"].shape[1]), output_tokens=len(times),
            text_events=len(times), output_tokens_source="generated ids",
            ttft=(times[0] if times else ended) - started, e2e=ended - started,
            itl=[b - a for a, b in pairwise(times)],
        )  # fmt: skip

    one(prompts[0], min(output_tokens, 4))  # warm-up: first-call allocations and lazy initialisation
    started = time.perf_counter()
    outputs = [one(p, output_tokens) for p in prompts]
    duration = time.perf_counter() - started
    return summarize(
        outputs, duration, api="hf-generate (in-process)", url="", model=str(model_dir), concurrency=1,
        prompt_tokens_target=len(tokenizer(prompts[0], add_special_tokens=False)["input_ids"]),
        output_tokens_target=output_tokens,
    )  # fmt: skip
