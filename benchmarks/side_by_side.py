"""Side by side on one random-weight Qwen3 model: HF generate, our reference backend, our torch engine and
`transformers serve --continuous-batching`, with the target ratios measured in the same run.

    python benchmarks/side_by_side.py                        # 0.6b shape, float32 and bfloat16, 64/64 tokens
    python benchmarks/side_by_side.py --shape tiny --num-requests 4 --output-tokens 8 --only a,d   # smoke

See benchmarks/README.md for what each row and target means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import statistics
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from qwen3_api.bench.apis import ApiKind, make_api
from qwen3_api.bench.hf_generate import run_hf_generate
from qwen3_api.bench.loadgen import LoadConfig, LoadGenerator, NoAcceptedStyle, request_seed, run_load
from qwen3_api.bench.metrics import BenchResult
from qwen3_api.bench.prompts import PromptBuilder
from qwen3_api.bench.roofline import measure_read_bandwidth, weight_bytes_per_token
from qwen3_api.bench.server_process import ServerProcess, ServerStartError, free_port
from qwen3_api.demo_models.checkpoints import cached_test_model

LABELS = {
    "a": "HF generate (in-process)",
    "b": "ours, reference backend",
    "c": "ours, torch engine",
    "d": "transformers serve --cb",
}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
T = TypeVar("T")


@dataclass
class Row:
    """One line of the table: a contender at one dtype and concurrency, or why it has no numbers."""

    key: str
    dtype: str
    concurrency: int
    result: BenchResult | None = None
    status: str = "ok"

    @property
    def label(self) -> str:
        return LABELS[self.key]


@dataclass
class PrefixResult:
    """TTFT of prompts sharing most of their tokens with the previous one, against cold prompts."""

    dtype: str
    prompt_tokens: int
    shared_fraction: float
    cold_ttft_ms: list[float] = field(default_factory=list)
    warm_ttft_ms: list[float] = field(default_factory=list)
    streamed: bool = True
    error: str = ""

    @property
    def ratio(self) -> float:
        if not self.cold_ttft_ms or not self.warm_ttft_ms:
            return math.nan
        return statistics.median(self.warm_ttft_ms) / statistics.median(self.cold_ttft_ms)


@dataclass
class Target:
    """One PASS/FAIL line."""

    name: str
    dtype: str
    measured: float
    target: float
    higher_is_better: bool
    detail: str

    @property
    def verdict(self) -> str:
        if math.isnan(self.measured):
            return "SKIP"
        ok = self.measured >= self.target if self.higher_is_better else self.measured <= self.target
        return "PASS" if ok else "FAIL"

    def line(self) -> str:
        sign = ">=" if self.higher_is_better else "<="
        measured = "-" if math.isnan(self.measured) else f"{self.measured:.2f}x"
        return (
            f"{self.verdict:<4}  [{self.dtype}] {self.name}: {measured} (target {sign} {self.target}x); {self.detail}"
        )


def in_subprocess(fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(*args)` in a fresh spawned process, so its memory (a model) is returned to the OS afterwards."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----- contenders -------------------------------------------------------------------------------------------


def kv_bytes_per_token(model_dir: Path, dtype: str) -> int:
    config = json.loads((model_dir / "config.json").read_text())
    head_dim = int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])
    return (
        2
        * int(config["num_hidden_layers"])
        * int(config["num_key_value_heads"])
        * head_dim
        * DTYPE_BYTES[dtype]
    )


def server_for(
    key: str, model_dir: Path, dtype: str, args: argparse.Namespace, log_dir: Path
) -> ServerProcess:
    """The server process of contender b, c or d on a fresh port, sized as `args` says."""
    port = free_port()
    log_path = log_dir / f"{key}-{dtype}-{model_dir.name}.log"
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    max_seqs = max(args.concurrency)
    if key in ("b", "c"):
        command = [
            sys.executable, "-m", "qwen3_api.cli", "serve", "--model", str(model_dir), "--dtype", dtype,
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        ]  # fmt: skip
        if key == "b":
            command += ["--backend", "reference"]
        else:
            command += [
                "--backend", "torch", "--quantize", "none", "--max-num-seqs", str(max(max_seqs, 8)),
                "--kv-cache-memory", str(args.kv_cache_gib), "--max-model-len", str(args.max_model_len),
                "--max-num-batched-tokens", str(args.max_batch_tokens),
            ]  # fmt: skip
        return ServerProcess(LABELS[key], command, port, ["/health"], log_path, env)
    # The same KV budget as our engine, in blocks, but no more than the sequences could ever fill.
    block = args.cb_block_size
    budget_blocks = int(args.kv_cache_gib * 1024**3 // (block * kv_bytes_per_token(model_dir, dtype)))
    needed_blocks = math.ceil(max(max_seqs, 8) * args.max_model_len / block)
    command = [
        str(Path(sys.executable).with_name("transformers")), "serve", str(model_dir), "--continuous-batching",
        "--dtype", dtype, "--device", "cpu", "--host", "127.0.0.1", "--port", str(port),
        "--cb-block-size", str(block), "--cb-num-blocks", str(max(1, min(budget_blocks, needed_blocks))),
        "--cb-max-batch-tokens", str(args.max_batch_tokens), "--log-level", "warning",
    ]  # fmt: skip
    return ServerProcess(LABELS[key], command, port, ["/v1/models"], log_path, env)


def api_for(key: str) -> ApiKind:
    return ApiKind.OPENAI_COMPLETIONS if key == "d" else ApiKind.NATIVE


def run_hf_rows(model_dir: Path, dtype: str, args: argparse.Namespace, builder: PromptBuilder) -> list[Row]:
    prompts = [builder.prompt(args.prompt_tokens, request_seed(args.seed, i)) for i in range(args.hf_runs)]
    log(f"[{dtype}] a: HF generate, {len(prompts)} runs ...")
    try:
        result = in_subprocess(run_hf_generate, model_dir, dtype, prompts, args.output_tokens)
    except Exception as exc:  # noqa: BLE001 -- a baseline that cannot run gets a row saying why
        return [Row("a", dtype, 1, status=f"failed: {type(exc).__name__}: {exc}")]
    return [Row("a", dtype, 1, result)]


async def measure_prefix(
    url: str, key: str, model: str | None, builder: PromptBuilder, dtype: str, args: argparse.Namespace
) -> PrefixResult:
    """Per trial: a cold prompt, then one sharing its first `prefix_shared` of tokens; streaming TTFT of each."""
    result = PrefixResult(dtype, args.prefix_tokens, args.prefix_shared)
    async with LoadGenerator(url, make_api(api_for(key), model), count_tokens=builder) as generator:
        await generator.prepare(
            builder.prompt(args.prefix_tokens, args.seed + 424_242), 2
        )  # warms long prefill
        result.streamed = generator.style is not None and generator.style.stream
        for trial in range(args.prefix_trials):
            first, second = builder.shared_prefix_pair(
                args.prefix_tokens, args.prefix_shared, args.seed * 7919 + 100_000 * (trial + 1)
            )
            cold = await generator.send(first, 2)
            warm = await generator.send(second, 2)
            if not (cold.success and warm.success):
                result.error = cold.error or warm.error
                return result
            result.cold_ttft_ms.append(cold.ttft * 1000)
            result.warm_ttft_ms.append(warm.ttft * 1000)
    return result


def run_server_rows(
    key: str,
    model_dir: Path,
    dtype: str,
    args: argparse.Namespace,
    builder: PromptBuilder,
    log_dir: Path,
    concurrency: list[int],
    num_requests: int,
    with_prefix: bool,
) -> tuple[list[Row], PrefixResult | None]:
    """Start contender `key`, run each concurrency, optionally the prefix test, and stop it."""
    server = server_for(key, model_dir, dtype, args, log_dir)
    model_name = str(model_dir) if key == "d" else None
    log(f"[{dtype}] {key}: starting {server.name} (log {server.log_path})")
    rows: list[Row] = []
    prefix: PrefixResult | None = None
    try:
        server.start()
        ready_s = server.wait_ready(args.start_timeout)
        log(f"[{dtype}] {key}: ready after {ready_s:.0f} s")
        for c in concurrency:
            config = LoadConfig(
                url=server.url, api=api_for(key), model=model_name, num_requests=num_requests, concurrency=c,
                prompt_tokens=args.prompt_tokens, output_tokens=args.output_tokens, ignore_eos=True,
                seed=args.seed * 1000 + c, timeout_s=args.request_timeout,
            )  # fmt: skip
            # New prompts for each row (seed per concurrency): a prefix cache must not skip prefill of prompts
            # an earlier row already sent to this server.
            try:
                result = asyncio.run(run_load(config, builder))
            except (NoAcceptedStyle, httpx.HTTPError) as exc:
                rows.append(Row(key, dtype, c, status=f"failed: {exc}"))
                log(
                    f"[{dtype}] {key} c={c}: failed: {exc}; server log: {server.log_path}\n{server.log_tail()}"
                )
                continue
            rows.append(Row(key, dtype, c, result))
            log(f"[{dtype}] {key} c={c}: {result.output_throughput:.2f} out tok/s, {result.failed} failed")
            if result.failed:
                log(f"  errors: {result.errors}; server log: {server.log_path}")
        if with_prefix:
            log(f"[{dtype}] {key}: prefix-cache TTFT test ...")
            try:
                prefix = asyncio.run(measure_prefix(server.url, key, model_name, builder, dtype, args))
            except (NoAcceptedStyle, httpx.HTTPError) as exc:
                prefix = PrefixResult(dtype, args.prefix_tokens, args.prefix_shared, error=str(exc))
    except ServerStartError as exc:
        log(f"[{dtype}] {key}: failed to start: {exc}; server log: {server.log_path}\n{server.log_tail()}")
        done = {r.concurrency for r in rows}
        rows += [Row(key, dtype, c, status=f"failed to start: {exc}") for c in concurrency if c not in done]
    finally:
        server.stop()
    return rows, prefix


# ----- targets and output -------------------------------------------------------------------------------------


def find(rows: list[Row], key: str, dtype: str, concurrency: int) -> BenchResult | None:
    for row in rows:
        if (
            row.key == key
            and row.dtype == dtype
            and row.concurrency == concurrency
            and row.result is not None
        ):
            return row.result if row.result.completed else None
    return None


def ratio_target(
    name: str, dtype: str, ours: BenchResult | None, theirs: BenchResult | None, target: float, decode: bool
) -> Target:
    """ours/theirs on decode tok/s (1/TPOT, when both streamed) or output tok/s."""
    if ours is None or theirs is None:
        return Target(name, dtype, math.nan, target, True, "missing a row")
    use_decode = (
        decode and not math.isnan(ours.decode_tokens_per_s) and not math.isnan(theirs.decode_tokens_per_s)
    )
    metric = "decode tok/s (1/TPOT)" if use_decode else "output tok/s"
    a = ours.decode_tokens_per_s if use_decode else ours.output_throughput
    b = theirs.decode_tokens_per_s if use_decode else theirs.output_throughput
    return Target(name, dtype, a / b if b > 0 else math.nan, target, True, f"{metric} {a:.2f} vs {b:.2f}")


def targets_for(rows: list[Row], prefixes: list[PrefixResult], dtypes: list[str], c_max: int) -> list[Target]:
    targets = []
    for dtype in dtypes:
        targets.append(ratio_target("c=1 decode, torch engine / HF generate", dtype,
                                    find(rows, "c", dtype, 1), find(rows, "a", dtype, 1), 1.0, True))  # fmt: skip
        targets.append(ratio_target(f"c={c_max} output tok/s, torch engine / reference backend", dtype,
                                    find(rows, "c", dtype, c_max), find(rows, "b", dtype, c_max),
                                    3.0, False))  # fmt: skip
        targets.append(ratio_target(f"c={c_max} output tok/s, torch engine / transformers serve --cb", dtype,
                                    find(rows, "c", dtype, c_max), find(rows, "d", dtype, c_max),
                                    1.5, False))  # fmt: skip
    for p in prefixes:
        detail = (
            f"median TTFT {statistics.median(p.warm_ttft_ms):.0f} ms with a {p.shared_fraction:.0%} shared prefix "
            f"vs {statistics.median(p.cold_ttft_ms):.0f} ms cold, {p.prompt_tokens}-token prompts, "
            f"{len(p.cold_ttft_ms)} trials" + ("" if p.streamed else " (NOT streamed: TTFT = e2e)")
            if not math.isnan(p.ratio) else f"no measurement: {p.error or 'missing'}"
        )  # fmt: skip
        targets.append(Target("prefix-cache TTFT, torch engine", p.dtype, p.ratio, 0.25, False, detail))
    return targets


def fmt(value: float, digits: int = 2) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def table(rows: list[Row]) -> str:
    header = (
        f"{'dtype':<9} {'contender':<26} {'c':>2} {'ok/fail':>7} {'out tok/s':>9} {'req/s':>6} {'decode/s':>8} "
        f"{'TTFT mean':>9} {'TTFT p50':>8} {'TTFT p99':>8} {'TPOT mean':>9} {'TPOT p99':>8} "
        f"{'ITL p50':>7} {'ITL p99':>7}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        start = f"{row.dtype:<9} {row.label:<26} {row.concurrency:>2}"
        r = row.result
        if r is None:
            lines.append(f"{start} {row.status}")
            continue
        lines.append(
            f"{start} {f'{r.completed}/{r.failed}':>7} {fmt(r.output_throughput):>9} {fmt(r.request_throughput):>6} "
            f"{fmt(r.decode_tokens_per_s):>8} {fmt(r.ttft_ms.mean, 0):>9} {fmt(r.ttft_ms.p50, 0):>8} "
            f"{fmt(r.ttft_ms.p99, 0):>8} {fmt(r.tpot_ms.mean, 1):>9} {fmt(r.tpot_ms.p99, 1):>8} "
            f"{fmt(r.itl_ms.p50, 1):>7} {fmt(r.itl_ms.p99, 1):>7}"
        )
    notes = sorted(
        {f"{row.dtype} {row.label}: {note}" for row in rows if row.result for note in row.result.notes}
    )
    lines += ["", "times in ms; decode/s = 1000 / mean TPOT (per-request decode speed)"]
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


# ----- main ---------------------------------------------------------------------------------------------------


def build_model(shape: str, dtype: str, num_layers: int | None) -> Path:
    log(
        f"model: {shape} {dtype}{f' {num_layers} layers' if num_layers else ''} (built once, then cached) ..."
    )
    return in_subprocess(cached_test_model, shape, 0, dtype, 0.02, num_layers)


def run_4b(
    args: argparse.Namespace, builder: PromptBuilder, log_dir: Path, bandwidth: float
) -> dict[str, Any]:
    """Decode tok/s of the 4b shape on our torch engine at c=1 against the memory-bandwidth limit."""
    dtype = args.dtype_4b
    model_dir = build_model("4b", dtype, None)
    rows, _ = run_server_rows("c", model_dir, dtype, args, builder, log_dir, [1], args.requests_4b, False)
    result = rows[0].result
    config = json.loads((model_dir / "config.json").read_text())
    per_token = weight_bytes_per_token(config, DTYPE_BYTES[dtype])
    limit = bandwidth * 1e9 / per_token
    measured = result.decode_tokens_per_s if result and result.completed else math.nan
    if result and result.completed and math.isnan(measured):
        measured = result.output_throughput  # non-streaming fallback
    return {"dtype": dtype, "row": rows[0], "decode_tok_s": measured, "limit_tok_s": limit,
            "weight_gb_per_token": per_token / 1e9, "bandwidth_gb_s": bandwidth}  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="0.6b", help="test model shape: tiny|0.6b|4b")
    p.add_argument("--num-layers", type=int, default=None, help="override the shape's layer count (quicker)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated")
    p.add_argument("--concurrency", type=ints, default=[1, 4, 8], help="comma-separated, e.g. 1,4,8")
    p.add_argument("--num-requests", type=int, default=16, help="timed requests per server row")
    p.add_argument("--hf-runs", type=int, default=4, help="timed generate calls of the HF baseline")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--only", default="a,b,c,d", help="contenders to run, e.g. a,d")
    p.add_argument(
        "--kv-cache-gib", type=float, default=1.0, help="KV budget of our engine and transformers'"
    )
    p.add_argument("--max-batch-tokens", type=int, default=512, help="token budget per step, both engines")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--cb-block-size", type=int, default=32, help="transformers serve KV block size")
    p.add_argument("--prefix-tokens", type=int, default=512, help="prompt length of the prefix-cache test")
    p.add_argument(
        "--prefix-shared", type=float, default=0.9, help="shared fraction in the prefix-cache test"
    )
    p.add_argument("--prefix-trials", type=int, default=3, help="0 skips the prefix-cache test")
    p.add_argument(
        "--with-4b", action="store_true", help="also 4b-shape decode vs the memory-bandwidth limit"
    )
    p.add_argument("--dtype-4b", default="bfloat16", help="dtype of the 4b model (float32 needs ~17 GB)")
    p.add_argument("--requests-4b", type=int, default=2)
    p.add_argument("--start-timeout", type=float, default=1200.0, help="seconds a server may take to start")
    p.add_argument("--request-timeout", type=float, default=3600.0, help="seconds one request may take")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None, help="also draw the server rows as a PNG here")
    args = p.parse_args(argv)
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    args.only = [k for k in args.only.split(",") if k]
    unknown = [k for k in args.only if k not in LABELS] + [d for d in args.dtypes if d not in DTYPE_BYTES]
    if unknown or not args.concurrency or min(args.concurrency) < 1:
        p.error(f"bad --only/--dtypes/--concurrency: {unknown or args.concurrency}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="qwen3-side-by-side."))
    log(f"server logs: {log_dir}")
    bandwidth = in_subprocess(measure_read_bandwidth)
    log(f"memory read bandwidth: {bandwidth:.1f} GB/s")
    rows: list[Row] = []
    prefixes: list[PrefixResult] = []
    builder: PromptBuilder | None = None
    c_max = 8 if 8 in args.concurrency else max(args.concurrency)
    for dtype in args.dtypes:
        model_dir = build_model(args.shape, dtype, args.num_layers)
        builder = builder or PromptBuilder.from_tokenizer_dir(model_dir)
        for key in args.only:
            if key == "a":
                rows += run_hf_rows(model_dir, dtype, args, builder)
                continue
            with_prefix = key == "c" and args.prefix_trials > 0
            new_rows, prefix = run_server_rows(
                key,
                model_dir,
                dtype,
                args,
                builder,
                log_dir,
                args.concurrency,
                args.num_requests,
                with_prefix,
            )
            rows += new_rows
            prefixes += [prefix] if prefix else []
    big = run_4b(args, builder or PromptBuilder(None), log_dir, bandwidth) if args.with_4b else None

    if args.plot is not None:
        from qwen3_api.bench.plot import plot_results

        series: dict[str, list[BenchResult]] = {}
        for row in rows:
            if row.result is not None:
                series.setdefault(f"{row.label} [{row.dtype}]", []).append(row.result)
        subtitle = f"random weights, {args.prompt_tokens}-token prompts, {args.output_tokens} output tokens"
        log(f"plot: {plot_results(series, args.plot, f'Qwen3 {args.shape} shape', subtitle)}")
    print(f"\nside by side: {args.shape} shape{f', {args.num_layers} layers' if args.num_layers else ''}, "
          f"random weights, {args.prompt_tokens}-token prompts, {args.output_tokens} output tokens, end tokens "
          f"ignored, {args.num_requests} requests per server row\n")  # fmt: skip
    print(table(rows))
    print("\ntargets (ratios measured in this run):")
    targets = targets_for(rows, prefixes, args.dtypes, c_max)
    for target in targets:
        print(target.line())
    model_dirs = {d: cached_test_model(args.shape, 0, d, 0.02, args.num_layers) for d in args.dtypes}
    print(f"\nmemory read bandwidth {bandwidth:.1f} GB/s; decode limit = bandwidth / weight bytes per token:")
    for dtype in args.dtypes:
        config = json.loads((model_dirs[dtype] / "config.json").read_text())
        limit = bandwidth * 1e9 / weight_bytes_per_token(config, DTYPE_BYTES[dtype])
        ours = find(rows, "c", dtype, 1)
        speed = ours.decode_tokens_per_s if ours else math.nan
        print(f"INFO  [{dtype}] {args.shape} c=1 torch engine decode {fmt(speed)} tok/s, limit {limit:.2f} tok/s "
              f"= {fmt(speed / limit)} of the limit")  # fmt: skip
    if big is not None:
        print(f"INFO  [{big['dtype']}] 4b c=1 torch engine decode {fmt(big['decode_tok_s'])} tok/s, limit "
              f"{big['limit_tok_s']:.2f} tok/s ({big['bandwidth_gb_s']:.1f} GB/s / {big['weight_gb_per_token']:.2f} "
              f"GB per token) = {fmt(big['decode_tok_s'] / big['limit_tok_s'])} of the limit"
              + ("" if big["row"].result else f"; {big['row'].status}"))  # fmt: skip
    print(f"\nserver logs: {log_dir}")
    if args.json_out:
        payload = {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "bandwidth_gb_s": bandwidth,
            "rows": [{"key": r.key, "label": r.label, "dtype": r.dtype, "concurrency": r.concurrency,
                      "status": r.status, "result": r.result.to_dict() if r.result else None} for r in rows],
            "prefix": [{**vars(p), "ratio": p.ratio} for p in prefixes],
            "targets": [{**vars(t), "verdict": t.verdict} for t in targets],
            "four_b": {k: v for k, v in big.items() if k != "row"} if big else None,
        }  # fmt: skip
        args.json_out.write_text(json.dumps(payload, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
