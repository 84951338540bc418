"""Decode speed of float32, bfloat16 and int8 weights side by side, through `TorchModelRunner` directly.

    python benchmarks/quantization.py                         # 0.6b shape: every variant, batch 1 and 8
    python benchmarks/quantization.py --with-4b               # + the 4b shape (all but float32)
    python benchmarks/quantization.py --shape tiny --steps 2 --repeats 1 --prompt-tokens 16   # smoke

Variants: `float32` and `bfloat16` are the plain model; `int8` is int8 weights with float32 activations,
`int8-bf16` int8 weights with bfloat16 activations. For each, B sequences prefill `--prompt-tokens` tokens
(untimed), then after `--warmup-steps` greedy decode steps of all B sequences, the best of `--repeats`
windows of `--steps` steps counts.

Limit column: read bandwidth (GB/s of a large float32 sum) / bytes of weights one step reads, i.e. the step
rate if every step only streamed its weights once; at B > 1 it bounds steps/s, not tokens/s. Run on an
otherwise idle machine: on 2 cores, a competing process halves every number.
"""

from __future__ import annotations

import argparse
import gc
import time
from dataclasses import dataclass

import torch

from qwen3_api.bench.roofline import measure_read_bandwidth
from qwen3_api.demo_models.checkpoints import cached_test_model
from qwen3_api.engine.protocols import BatchEntry
from qwen3_api.executors.model_runner import TorchModelRunner
from qwen3_api.models.quantization import QuantizationMethod, quantize_model, weight_bytes
from qwen3_api.models.weights import load_model


@dataclass(frozen=True)
class Variant:
    """How to build one contender: the activation dtype and the weight quantization."""

    name: str
    dtype: torch.dtype
    quantize: QuantizationMethod


VARIANTS = {
    "float32": Variant("float32", torch.float32, "none"),
    "bfloat16": Variant("bfloat16", torch.bfloat16, "none"),
    "int8": Variant("int8", torch.float32, "int8"),
    "int8-bf16": Variant("int8-bf16", torch.bfloat16, "int8"),
}
BLOCK_SIZE = 16


@dataclass(frozen=True)
class Result:
    """One variant at one batch size."""

    shape: str
    variant: str
    batch: int
    steps_per_s: float  # decode steps per second (= tokens/s of each sequence)
    limit_steps_per_s: float  # bandwidth / weight bytes read per step
    weight_gib: float

    @property
    def tokens_per_s(self) -> float:
        return self.steps_per_s * self.batch


def build_runner(model_dir: str, variant: Variant, max_batch: int, max_len: int) -> TorchModelRunner:
    # Loading in bfloat16 before quantizing halves the peak for float32 checkpoints; the int8 values are the
    # same either way up to the bfloat16 rounding of the weights, which the int8 rounding dominates.
    load_dtype = torch.bfloat16 if variant.quantize != "none" else variant.dtype
    model = quantize_model(load_model(model_dir, dtype=load_dtype), variant.quantize)
    blocks_per_seq = -(-max_len // BLOCK_SIZE)
    return TorchModelRunner(model, dtype=variant.dtype, num_blocks=max_batch * blocks_per_seq,
                            block_size=BLOCK_SIZE)


def time_decode(runner: TorchModelRunner, batch: int, args: argparse.Namespace) -> float:
    """Prefill `batch` fresh sequences, then return the best decode steps/s of `args.repeats` windows of
    `args.steps` steps (the best, because on a shared host a competing process only ever slows a window)."""
    blocks_per_seq = -(-max_len(args) // BLOCK_SIZE)
    tables = [list(range(i * blocks_per_seq, (i + 1) * blocks_per_seq)) for i in range(batch)]
    generator = torch.Generator().manual_seed(batch)
    vocab = runner.config.vocab_size
    prompts = [torch.randint(0, vocab, (args.prompt_tokens,), generator=generator).tolist() for _ in range(batch)]
    logits = runner.forward([BatchEntry(p, 0, t, need_logits=True) for p, t in zip(prompts, tables, strict=True)])
    position = args.prompt_tokens
    best = 0.0
    for window in range(-1, args.repeats):  # window -1 is the untimed warm-up
        started = time.perf_counter()
        for _ in range(args.warmup_steps if window < 0 else args.steps):
            next_tokens = logits.argmax(dim=-1).tolist()
            logits = runner.forward([BatchEntry([tok], position, t, need_logits=True)
                                     for tok, t in zip(next_tokens, tables, strict=True)])
            position += 1
        if window >= 0:
            best = max(best, args.steps / (time.perf_counter() - started))
    return best


def max_len(args: argparse.Namespace) -> int:
    return args.prompt_tokens + args.warmup_steps + args.repeats * args.steps


def run_shape(shape: str, variants: list[Variant], bandwidth: float, args: argparse.Namespace) -> list[Result]:
    # One bfloat16 checkpoint serves every variant (float32 loads it upcast; speed does not depend on the
    # values) and is the same cached model side_by_side.py builds, at half the disk of a float32 one.
    model_dir = str(cached_test_model(shape, dtype="bfloat16", num_layers=args.num_layers))
    results = []
    for variant in variants:
        runner = build_runner(model_dir, variant, max(args.batch_sizes), max_len(args))
        counts = weight_bytes(runner.model)
        limit = counts.decode_tokens_per_s_limit(bandwidth)
        for batch in args.batch_sizes:
            rate = time_decode(runner, batch, args)
            results.append(Result(shape, variant.name, batch, rate, limit, counts.total / 2**30))
            print(f"  {shape:5} {variant.name:9} B={batch}: {rate:7.2f} steps/s, {rate * batch:7.2f} tok/s, "
                  f"limit {limit:7.2f} steps/s ({rate / limit:4.0%}), weights {counts.total / 2**30:.2f} GiB",
                  flush=True)
        del runner, counts
        gc.collect()
    return results


def print_ratios(results: list[Result], batch_sizes: list[int]) -> None:
    rates = {(r.shape, r.variant, r.batch): r.tokens_per_s for r in results}
    for shape in dict.fromkeys(r.shape for r in results):
        for batch in batch_sizes:
            for quantized, base in (("int8", "bfloat16"), ("int8", "float32"), ("int8-bf16", "bfloat16")):
                q, b = rates.get((shape, quantized, batch)), rates.get((shape, base, batch))
                if q is None or b is None:
                    continue
                line = f"{shape:5} B={batch}: {quantized} / {base} = {q / b:.2f}x"
                if batch == 1 and base == "bfloat16":
                    line += f"  [{'PASS' if q / b >= 1.8 else 'FAIL'}: target >= 1.8x]"
                print(line)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="0.6b", help="test model shape (tiny, 0.6b, 4b)")
    parser.add_argument("--with-4b", action="store_true", help="also the 4b shape (bfloat16 checkpoint)")
    parser.add_argument("--num-layers", type=int, default=None, help="fewer layers for a quicker run")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--batch-sizes", default="1,8", type=lambda s: [int(b) for b in s.split(",")])
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="decode steps per timed window")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows per batch size; the best counts")
    parser.add_argument("--warmup-steps", type=int, default=2)
    args = parser.parse_args()
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    return args


def main() -> None:
    args = parse_args()
    variants = [VARIANTS[name] for name in args.variants.split(",")]
    bandwidth = measure_read_bandwidth()
    print(f"memory read bandwidth {bandwidth:.1f} GB/s, {torch.get_num_threads()} threads, torch {torch.__version__}")
    results = run_shape(args.shape, variants, bandwidth, args)
    if args.with_4b:
        # float32 4b weights are 16 GB: too much next to the rest on a 24 GiB host, so it is left out
        results += run_shape("4b", [v for v in variants if v.name != "float32"], bandwidth, args)
    print_ratios(results, args.batch_sizes)


if __name__ == "__main__":
    main()
