"""Where one engine step goes on the llama.cpp backend, by phase, at batch sizes 1, 4, 8, 16 — in process.

    python benchmarks/step_profile.py                                    # 0.6b shape Q8_0, greedy and top-p/top-k
    python benchmarks/step_profile.py --batches 8 --runner flash_attention=true --runner n_ubatch=64
    python benchmarks/step_profile.py --compare-src /tmp/baseline/src    # the same table for older sources
    python benchmarks/step_profile.py --gguf model-Q6_K.gguf --workloads greedy   # any GGUF file

The engine is built as `qwen3-api serve --backend llamacpp` builds it (`build_llamacpp_engine`), on the 0.6b-shape
test GGUF. Each batch size runs B requests of `--prompt-tokens` random tokens (end tokens ignored); once all of
them decode, `--steps` decode steps are timed, each split into:

  schedule   `Scheduler.schedule` + `Scheduler.update` (+ the engine's batch building)
  decode     `llama_decode` itself (C++, GIL released)
  logits     copying the sampled rows' logits out of llama.cpp into the torch tensor
  runner     the rest of `LlamaCppModelRunner.forward` (slot bookkeeping, filling llama_batch)
  grammar    structured-output masks (only in the `json` workload)
  sampler    `Sampler.sample`
  detok      incremental detokenization of the new tokens (what the async front does per output)
  other      the rest of `LLMEngine.step` (outputs, bookkeeping)

Instances are wrapped with timers (nothing in the product code knows it is being timed). `--compare-src` runs
the whole profile a second time in a child process with another source tree first on PYTHONPATH, alternating
the two `--rounds` times, and prints both tables and the ratios: on a shared machine only such side-by-side
ratios mean anything. Phases a source tree does not expose separately are folded into `runner`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

PHASES = ("schedule", "decode", "logits", "runner", "grammar", "sampler", "detok", "other")
WORKLOADS: dict[str, dict[str, Any]] = {
    "greedy": {"temperature": 0.0},
    # Qwen3's recommended non-thinking sampling settings.
    "topk-topp": {"temperature": 0.7, "top_p": 0.8, "top_k": 20},
    "topp": {"temperature": 1.0, "top_p": 0.95},
    "seeded": {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "seed": 1},
    "json": {"temperature": 0.0, "structured": "json_object"},
}


class PhaseClock:
    """Accumulates wall time per phase; `wrap` replaces an attribute of an object with a timed version."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)

    def wrap(self, owner: Any, name: str, phase: str) -> None:
        inner = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.totals[phase] += time.perf_counter() - start

        setattr(owner, name, timed)

    def reset(self) -> None:
        self.totals.clear()


class _TimedLibrary:
    """Stands in for the `llama_cpp` module inside one runner, timing `llama_decode`."""

    def __init__(self, lib: Any, clock: PhaseClock) -> None:
        self._lib = lib
        self._clock = clock

    def llama_decode(self, ctx: Any, batch: Any) -> int:
        start = time.perf_counter()
        try:
            return int(self._lib.llama_decode(ctx, batch))
        finally:
            self._clock.totals["decode"] += time.perf_counter() - start

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lib, name)


def parse_runner_options(items: list[str]) -> dict[str, Any]:
    """`name=value` pairs for the runner (JSON values, else strings)."""
    options: dict[str, Any] = {}
    for item in items:
        name, _, text = item.partition("=")
        try:
            options[name] = json.loads(text)
        except json.JSONDecodeError:
            options[name] = text
    return options


def build_engine(args: argparse.Namespace, max_num_seqs: int) -> Any:
    """The llama.cpp engine `qwen3-api serve --backend llamacpp` builds, on the test GGUF."""
    import torch

    from qwen3_api.config import Settings
    from qwen3_api.demo_models.gguf import cached_test_gguf
    from qwen3_api.engine.tokenizer import Tokenizer
    from qwen3_api.models.gguf import read_gguf_metadata
    from qwen3_api.runtime import llamacpp_engine

    gguf = Path(args.gguf) if args.gguf else Path(cached_test_gguf(args.qtype, shape=args.shape))
    tokenizer = Tokenizer.from_gguf(gguf, read_gguf_metadata(gguf))
    settings = Settings(model="unused", max_num_seqs=max_num_seqs, max_num_batched_tokens=512,
                        **parse_runner_options(args.setting))  # fmt: skip
    options = parse_runner_options(args.runner)
    if options:
        # Runner knobs the settings do not carry (or not in every source tree): passed straight through.
        original = llamacpp_engine.LlamaCppModelRunner

        def patched(*a: Any, **kw: Any) -> Any:
            return original(*a, **{**kw, **options})

        llamacpp_engine.LlamaCppModelRunner = patched  # type: ignore[misc,assignment]
        try:
            engine = llamacpp_engine.build_llamacpp_engine(settings, gguf, tokenizer, args.max_model_len)
        finally:
            llamacpp_engine.LlamaCppModelRunner = original  # type: ignore[misc]
    else:
        engine = llamacpp_engine.build_llamacpp_engine(settings, gguf, tokenizer, args.max_model_len)
    torch.set_num_threads(1)
    return engine, tokenizer


def instrument(engine: Any, clock: PhaseClock) -> None:
    """Wrap the engine's parts with timers, phase by phase."""
    runner = engine.runner
    runner._lib = _TimedLibrary(runner._lib, clock)
    clock.wrap(engine.scheduler, "schedule", "schedule")
    clock.wrap(engine.scheduler, "update", "schedule")
    clock.wrap(engine, "_batch", "schedule")
    clock.wrap(runner, "forward", "forward")
    if hasattr(runner, "_copy_logits"):
        clock.wrap(runner, "_copy_logits", "logits")
    clock.wrap(engine.sampler, "sample", "sampler")
    if engine.mask_logits is not None:
        clock.wrap(engine, "mask_logits", "grammar")


def sampling_params(workload: str, max_tokens: int, index: int) -> Any:
    from qwen3_api.engine.sampling import SamplingParams
    from qwen3_api.engine.structured import StructuredOutput

    options = dict(WORKLOADS[workload])
    if "seed" in options:
        options["seed"] = options["seed"] + index
    if "structured" in options:
        options["structured"] = StructuredOutput(options["structured"])
    return SamplingParams(max_tokens=max_tokens, ignore_eos=True, **options)


def profile_batch(engine: Any, tokenizer: Any, clock: PhaseClock, batch: int, workload: str,
                  args: argparse.Namespace) -> dict[str, float]:  # fmt: skip
    """Mean milliseconds per decode step of `batch` sequences, by phase."""
    from qwen3_api.engine.detokenize import IncrementalDetokenizer

    rng = random.Random(args.seed + batch)
    detokenizers = {}
    for i in range(batch):
        prompt = [rng.randrange(0, 151000) for _ in range(args.prompt_tokens)]
        request_id = f"{workload}-{batch}-{i}"
        engine.add_request(request_id, prompt, sampling_params(workload, args.steps + 64, i))
        detokenizers[request_id] = IncrementalDetokenizer(tokenizer, prompt)

    def step() -> tuple[float, int]:
        start = time.perf_counter()
        outputs = engine.step()
        detok_start = time.perf_counter()
        for out in outputs:
            detokenizers[out.request_id].add(out.new_token_ids)
        end = time.perf_counter()
        clock.totals["detok"] += end - detok_start
        return end - start, len(outputs)

    while True:  # prefill (and the first decodes) until every sequence decodes in one step
        _, produced = step()
        if produced == batch and engine.scheduler.num_waiting == 0:
            break
    step()  # one warm decode
    clock.reset()
    total = 0.0
    for _ in range(args.steps):
        elapsed, produced = step()
        if produced != batch:
            raise RuntimeError(f"a decode step produced {produced} tokens, expected {batch}")
        total += elapsed
    for request_id in detokenizers:
        engine.abort_request(request_id)
    t = {k: v * 1000 / args.steps for k, v in clock.totals.items()}
    forward = t.pop("forward", 0.0)
    row = {phase: t.get(phase, 0.0) for phase in PHASES}
    row["runner"] = forward - row["decode"] - row["logits"]
    row["total"] = total * 1000 / args.steps
    row["other"] = row["total"] - sum(row[p] for p in PHASES if p != "other")
    return row


def run_profile(args: argparse.Namespace) -> dict[str, dict[str, dict[str, float]]]:
    """{workload: {batch: {phase: ms}}} for this process's sources."""
    clock = PhaseClock()
    engine, tokenizer = build_engine(args, max(args.batches))
    instrument(engine, clock)
    if "json" in args.workloads:
        engine.prepare_grammar()
    results: dict[str, dict[str, dict[str, float]]] = {}
    for workload in args.workloads:
        results[workload] = {}
        for batch in args.batches:
            results[workload][str(batch)] = profile_batch(engine, tokenizer, clock, batch, workload, args)
            print(f"  {workload} B={batch}: {results[workload][str(batch)]['total']:.1f} ms/step", file=sys.stderr,
                  flush=True)  # fmt: skip
    engine.runner.close()
    return results


def print_table(title: str, results: dict[str, dict[str, dict[str, float]]]) -> None:
    print(f"\n{title} (ms per decode step; tok/s = B / step)")
    print("| workload | B | " + " | ".join(PHASES) + " | total | tok/s |")
    print("|---|---:|" + "---:|" * (len(PHASES) + 2))
    for workload, by_batch in results.items():
        for batch, row in by_batch.items():
            cells = " | ".join(f"{row[p]:.1f}" for p in PHASES)
            print(f"| {workload} | {batch} | {cells} | {row['total']:.1f} | {int(batch) * 1000 / row['total']:.1f} |")


def merge_rounds(rounds: list[dict[str, dict[str, dict[str, float]]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Median of each cell over rounds."""
    merged: dict[str, dict[str, dict[str, float]]] = {}
    for workload, by_batch in rounds[0].items():
        merged[workload] = {}
        for batch, row in by_batch.items():
            merged[workload][batch] = {k: statistics.median(r[workload][batch][k] for r in rounds) for k in row}
    return merged


def child(src: str | None, argv: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, __file__, "--json", *argv], env=env, check=True, stdout=subprocess.PIPE)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="0.6b")
    parser.add_argument("--qtype", default="Q8_0")
    parser.add_argument("--gguf", help="profile this GGUF file instead of the --shape/--qtype test file")
    parser.add_argument("--batches", default="1,4,8,16", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--workloads", default="greedy,topk-topp", type=lambda s: s.split(","))
    parser.add_argument("--steps", type=int, default=12, help="timed decode steps per batch size")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runner", action="append", default=[], help="runner keyword NAME=VALUE (repeatable)")
    parser.add_argument("--setting", action="append", default=[], help="Settings field NAME=VALUE (repeatable)")
    parser.add_argument("--compare-src", help="another source tree (its src/ dir) to profile side by side")
    parser.add_argument("--compare-runner", action="append", default=None,
                        help="runner options for the comparison run instead of --runner (repeatable)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds with --compare-src/-runner")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workloads {unknown}; choose from {', '.join(WORKLOADS)}")
    if args.json:
        print(json.dumps(run_profile(args)))
        return
    if args.compare_src is None and args.compare_runner is None:
        print_table("this tree", run_profile(args))
        return
    argv = _strip_values(sys.argv[1:], ("--compare-src", "--rounds", "--compare-runner"))
    other_argv = argv
    if args.compare_runner is not None:
        other_argv = _strip_values(argv, ("--runner",)) + [f"--runner={r}" for r in args.compare_runner]
    ours: list[dict[str, dict[str, dict[str, float]]]] = []
    theirs: list[dict[str, dict[str, dict[str, float]]]] = []
    for i in range(args.rounds):
        print(f"round {i + 1}/{args.rounds}", file=sys.stderr, flush=True)
        theirs.append(child(args.compare_src, other_argv))
        ours.append(child(None, argv))
    a, b = merge_rounds(theirs), merge_rounds(ours)
    print_table(f"comparison ({args.compare_src or 'this tree'} {args.compare_runner or ''})", a)
    print_table(f"this tree {args.runner or ''}", b)
    print("\nratios: comparison step time / this tree's (> 1: this tree is faster)")
    for workload, by_batch in b.items():
        cells = ", ".join(f"B={k} {a[workload][k]['total'] / row['total']:.2f}x" for k, row in by_batch.items())
        print(f"  {workload}: {cells}")


def _strip_values(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """`argv` without the given options and their values (both `--x v` and `--x=v`)."""
    out: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
            continue
        if item in names:
            skip = True
            continue
        if item.startswith(tuple(n + "=" for n in names)):
            continue
        out.append(item)
    return out


if __name__ == "__main__":
    main()
