"""OpenVINO GenAI's continuous batching, driven in-process like a server under load (run inside its own venv).

    python openvino_driver.py SPEC.json OUT.json

SPEC: {"model_dir", "threads", "cache_gb", "max_num_batched_tokens", "max_num_seqs",
       "runs": [{"concurrency", "output_tokens", "warmup": [ids], "prompts": [[ids], ...]}]}.
Each run keeps `concurrency` requests in flight (a new one is added as soon as one finishes, like C clients
sending back to back) through `ContinuousBatchingPipeline.add_request` and a `step()` loop, greedy, end tokens
ignored, exactly `output_tokens` tokens each. Per request it records what a streaming client would see: TTFT (first
token readable after a step, from add_request), the gaps between steps that gave it tokens, and e2e. OUT holds those
raw timings; the caller summarizes them with the same code as `qwen3-api bench`. Only the standard library,
numpy and OpenVINO are imported here: this venv has no qwen3_api.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


class Tracked:
    """One request in flight: its handle and what a streaming client would have timed."""

    def __init__(self, handle: Any, prompt_tokens: int, sent: float) -> None:
        self.handle = handle
        self.prompt_tokens = prompt_tokens
        self.sent = sent
        self.first: float | None = None
        self.last = sent
        self.itl: list[float] = []
        self.tokens = 0

    def observe(self, now: float, new_tokens: int) -> None:
        if new_tokens <= 0:
            return
        if self.first is None:
            self.first = now
        else:
            self.itl.append(now - self.last)
        self.last = now
        self.tokens += new_tokens

    def record(self, now: float) -> dict[str, Any]:
        first = self.first if self.first is not None else now
        return {"ttft": first - self.sent, "e2e": now - self.sent, "itl": self.itl,
                "output_tokens": self.tokens, "prompt_tokens": self.prompt_tokens}  # fmt: skip


def new_tokens(handle: Any) -> int:
    """Tokens generated since the last read (read() hands out each token once)."""
    if not handle.can_read():
        return 0
    return sum(len(output.generated_ids) for output in handle.read().values())


def run_load(pipe: Any, genai: Any, ov: Any, np: Any, prompts: list[list[int]], output_tokens: int,
             concurrency: int, first_id: int) -> tuple[list[dict[str, Any]], float]:  # fmt: skip
    """Send `prompts` with `concurrency` in flight; return per-request timings and the wall time."""
    config = genai.GenerationConfig()
    config.max_new_tokens = output_tokens
    config.min_new_tokens = output_tokens
    config.ignore_eos = True
    config.do_sample = False
    waiting = list(enumerate(prompts))
    in_flight: dict[int, Tracked] = {}
    records: list[dict[str, Any] | None] = [None] * len(prompts)
    started = time.perf_counter()
    while waiting or in_flight:
        while waiting and len(in_flight) < concurrency:
            index, ids = waiting.pop(0)
            tensor = ov.Tensor(np.asarray([ids], dtype=np.int64))
            handle = pipe.add_request(first_id + index, tensor, config)
            in_flight[index] = Tracked(handle, len(ids), time.perf_counter())
        pipe.step()
        now = time.perf_counter()
        for index, tracked in list(in_flight.items()):
            tracked.observe(now, new_tokens(tracked.handle))
            status = tracked.handle.get_status()
            if status != genai.GenerationStatus.RUNNING:
                if status != genai.GenerationStatus.FINISHED:
                    raise RuntimeError(f"request {index} ended with status {status}")
                records[index] = tracked.record(now)
                del in_flight[index]
    return [r for r in records if r is not None], time.perf_counter() - started


def main(spec_path: str, out_path: str) -> None:
    import numpy as np
    import openvino as ov
    import openvino_genai as genai

    spec = json.loads(Path(spec_path).read_text())
    scheduler = genai.SchedulerConfig()
    scheduler.cache_size = int(spec["cache_gb"])  # whole GB on CPU
    scheduler.max_num_batched_tokens = int(spec["max_num_batched_tokens"])
    scheduler.max_num_seqs = int(spec["max_num_seqs"])
    scheduler.enable_prefix_caching = False  # every prompt is fresh anyway
    properties = {"INFERENCE_NUM_THREADS": int(spec["threads"])}
    loaded = time.perf_counter()
    pipe = genai.ContinuousBatchingPipeline(spec["model_dir"], scheduler, "CPU", properties)
    load_s = time.perf_counter() - loaded
    runs = []
    next_id = 0
    for run in spec["runs"]:
        run_load(pipe, genai, ov, np, [run["warmup"]], min(4, run["output_tokens"]), 1, next_id)  # untimed
        next_id += 1
        records, duration = run_load(pipe, genai, ov, np, run["prompts"], run["output_tokens"],
                                     run["concurrency"], next_id)  # fmt: skip
        next_id += len(run["prompts"])
        runs.append({"concurrency": run["concurrency"], "duration_s": duration, "requests": records})
        print(f"openvino c={run['concurrency']}: {sum(r['output_tokens'] for r in records) / duration:.2f} "
              "output tok/s", flush=True)  # fmt: skip
    Path(out_path).write_text(json.dumps({"openvino_genai": genai.__version__, "load_s": load_s, "runs": runs}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
