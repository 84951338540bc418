"""Side by side on one GGUF file: llama-cpp-python's own OpenAI server against ours on the llama.cpp backend.

    python benchmarks/llamacpp.py                       # 0.6b shape, Q8_0, c=1 and c=4, 64/64 tokens
    python benchmarks/llamacpp.py --qtypes Q8_0,F16 --with-4b
    python benchmarks/llamacpp.py --shape tiny --num-requests 4 --output-tokens 8     # smoke

Both servers get the same requests: OpenAI completions, streamed, temperature 0, and end tokens ignored the one way
both accept: `logit_bias` -100 on Qwen3's end tokens (llama_cpp.server has no `ignore_eos`, and would silently
drop the field). Targets: c=1 output tok/s >= 0.95x theirs; c=4 aggregate >= 2x theirs (their server runs one
request at a time). Also the TTFT of a prompt sharing most of its tokens with the previous one: their server
reuses the previous prompt's KV; ours takes over the finished request's llama.cpp sequence (target: lower than
theirs). Last, each file's c=1 decode rate against the memory-bandwidth limit: bandwidth / bytes of the file's
tensors (every weight is read once per token; with tied embeddings the embedding matrix is the output head).
Needs `llama_cpp.server`'s extra dependencies (fastapi, uvicorn, sse-starlette, starlette-context,
pydantic-settings). Timings on 2 cores collapse when another process competes: run on an idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from qwen3_api.bench.apis import OpenAICompletionsApi, RequestStyle
from qwen3_api.bench.loadgen import LoadGenerator, request_seed
from qwen3_api.bench.metrics import BenchResult, summarize
from qwen3_api.bench.prompts import PromptBuilder
from qwen3_api.bench.roofline import measure_read_bandwidth
from qwen3_api.bench.server_process import ServerProcess, free_port
from qwen3_api.demo_models.checkpoints import END_TOKEN_IDS, cached_test_model
from qwen3_api.demo_models.gguf import cached_test_gguf, parse_gguf_type

SERVERS = ("llama_cpp.server", "ours --backend llamacpp")


class EndTokensBiasedApi(OpenAICompletionsApi):
    """Streamed completions with the end tokens made unpickable by `logit_bias`, for both servers alike."""

    def styles(self, ignore_eos: bool) -> list[RequestStyle]:
        bias = {str(token): -100.0 for token in END_TOKEN_IDS}
        usage: dict[str, Any] = {"stream_options": {"include_usage": True}}
        return [
            RequestStyle(True, {**usage, "logit_bias": bias}, True, "streaming, logit_bias -100 on end tokens"),
            RequestStyle(True, {"logit_bias": bias}, True, "streaming without stream_options, logit_bias"),
        ]


def server_command(name: str, gguf: Path, port: int, args: argparse.Namespace) -> list[str]:
    if name == SERVERS[0]:
        return [
            sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
            "--port", str(port), "--n_ctx", str(args.max_model_len), "--n_threads", str(args.threads),
            "--n_threads_batch", str(args.threads), "--n_batch", "512",
        ]  # fmt: skip
    return [
        sys.executable, "-m", "qwen3_api.cli", "serve", "--model", str(gguf), "--backend", "llamacpp",
        "--host", "127.0.0.1", "--port", str(port), "--max-model-len", str(args.max_model_len),
        "--max-num-seqs", str(max(args.concurrency)),
    ]  # fmt: skip


def served_model(url: str) -> str:
    """The model id the server lists first (ours requires `model`; llama_cpp.server answers to its alias)."""
    response = httpx.get(f"{url}/v1/models", timeout=30, trust_env=False)
    response.raise_for_status()
    return str(response.json()["data"][0]["id"])


async def measure(url: str, builder: PromptBuilder, concurrency: int, args: argparse.Namespace) -> BenchResult:
    """One load run: `num_requests` prompts of `prompt_tokens`, `output_tokens` each, `concurrency` at a time."""
    api = EndTokensBiasedApi(model=served_model(url))
    prompts = [
        builder.prompt(args.prompt_tokens, request_seed(args.seed + concurrency, i)) for i in range(args.num_requests)
    ]
    async with LoadGenerator(url, api, max_connections=concurrency + 2, count_tokens=builder) as generator:
        await generator.prepare(builder.prompt(args.prompt_tokens, args.seed + 99), 4)
        outputs, duration = await generator.run(prompts, args.output_tokens, concurrency)
        notes = list(generator.notes)
    return summarize(
        outputs, duration, api="openai-completions", url=url, model=None, concurrency=concurrency,
        prompt_tokens_target=args.prompt_tokens, output_tokens_target=args.output_tokens, notes=notes,
    )  # fmt: skip


async def prefix_ttft(url: str, builder: PromptBuilder, args: argparse.Namespace) -> tuple[float, float]:
    """Median streaming TTFT (ms) of cold prompts, and of prompts sharing most tokens with the one just sent."""
    cold, warm = [], []
    async with LoadGenerator(url, EndTokensBiasedApi(model=served_model(url)), count_tokens=builder) as generator:
        await generator.prepare(builder.prompt(args.prefix_tokens, args.seed + 4242), 2)
        for trial in range(args.prefix_trials):
            first, second = builder.shared_prefix_pair(args.prefix_tokens, 0.9, args.seed * 7919 + 1000 * (trial + 1))
            a, b = await generator.send(first, 2), await generator.send(second, 2)
            if a.success and b.success:
                cold.append(a.ttft * 1000)
                warm.append(b.ttft * 1000)
    if not cold:
        return float("nan"), float("nan")
    return statistics.median(cold), statistics.median(warm)


def gguf_weight_bytes(path: Path) -> int:
    """Bytes of all tensors in a GGUF file: what one decode step reads (headers are memory-mapped, not read)."""
    import gguf

    return sum(int(tensor.n_bytes) for tensor in gguf.GGUFReader(path).tensors)


def run_server(
    name: str, gguf: Path, builder: PromptBuilder, args: argparse.Namespace, log_dir: Path
) -> dict[Any, Any]:
    port = free_port()
    health = ("/v1/models",) if name == SERVERS[0] else ("/health",)
    log_path = log_dir / f"{name.split()[0]}-{gguf.stem}.log"
    server = ServerProcess(name, server_command(name, gguf, port, args), port, health, log_path)
    print(f"  {name}: starting (log {log_path})", flush=True)
    results: dict[str, Any] = {}
    with server:
        server.wait_ready(args.start_timeout)
        for c in args.concurrency:
            results[c] = asyncio.run(measure(server.url, builder, c, args))
            r = results[c]
            print(
                f"  {name} c={c}: {r.output_throughput:.2f} out tok/s, TTFT p50 {r.ttft_ms.p50:.0f} ms"
                + (f"  [{'; '.join(r.notes)}]" if r.notes else ""),
                flush=True,
            )
        results["prefix"] = asyncio.run(prefix_ttft(server.url, builder, args))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="0.6b")
    parser.add_argument("--with-4b", action="store_true", help="also the 4b shape")
    parser.add_argument("--qtypes", default="Q8_0", help="comma-separated GGUF types (what demo_models/gguf.py writes)")
    parser.add_argument("--concurrency", default="1,4", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--num-requests", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--prefix-tokens", type=int, default=512)
    parser.add_argument("--prefix-trials", type=int, default=3)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start-timeout", type=float, default=300)
    parser.add_argument("--plot", type=Path, default=None, help="PNG per GGUF file: PATH with -<shape>-<type>")
    args = parser.parse_args()
    shapes = [args.shape] + (["4b"] if args.with_4b and args.shape != "4b" else [])
    log_dir = Path(tempfile.mkdtemp(prefix="bench-llamacpp-"))
    bandwidth = measure_read_bandwidth(num_threads=args.threads)
    print(f"memory read bandwidth: {bandwidth:.1f} GB/s", flush=True)
    for shape in shapes:
        # The 4b shape is built in bfloat16, as Qwen3 checkpoints are (float32 would need ~17 GB).
        dtype = "bfloat16" if shape == "4b" else "float32"
        model_dir = cached_test_model(shape, dtype=dtype)
        builder = PromptBuilder.from_tokenizer_dir(model_dir)
        for qtype in (parse_gguf_type(q) for q in args.qtypes.split(",")):
            gguf = cached_test_gguf(qtype, shape=shape, dtype=dtype)
            print(f"{shape} {qtype}: {gguf}", flush=True)
            try:
                theirs, ours = (run_server(name, gguf, builder, args, log_dir) for name in SERVERS)
            except Exception as exc:  # a server that fails to start or serve: say so, go on with the next file
                print(f"  failed: {exc!r} (logs in {log_dir})", flush=True)
                continue
            if args.plot is not None:
                from qwen3_api.bench.plot import plot_results

                pairs = zip(SERVERS, (theirs, ours), strict=True)
                series = {name: [r[c] for c in args.concurrency] for name, r in pairs}
                out = args.plot.with_name(f"{args.plot.stem}-{shape}-{qtype}{args.plot.suffix or '.png'}")
                subtitle = f"GGUF {qtype}, {args.prompt_tokens}-token prompts, {args.output_tokens} output tokens"
                print(f"  plot: {plot_results(series, out, f'Qwen3 {shape} shape', subtitle)}", flush=True)
            for c in args.concurrency:
                t, o = theirs[c].output_throughput, ours[c].output_throughput
                target = 0.95 if c == 1 else 2.0
                print(f"  c={c}: ours/theirs output tok/s = {o / t:.2f} (target >= {target})")
            (tc, tw), (oc, ow) = theirs["prefix"], ours["prefix"]
            print(
                f"  TTFT {args.prefix_tokens}-token prompt, cold/90%-shared ms: theirs {tc:.0f}/{tw:.0f}, "
                f"ours {oc:.0f}/{ow:.0f}" + (f" (target: ours warm < theirs warm: {'PASS' if ow < tw else 'MISS'})")
            )
            if 1 not in args.concurrency:
                continue
            weight_gb = gguf_weight_bytes(gguf) / 1e9
            limit = bandwidth / weight_gb
            od, td = ours[1].decode_tokens_per_s, theirs[1].decode_tokens_per_s
            print(
                f"  c=1 decode: ours {od:.2f}, theirs {td:.2f} tok/s; bandwidth limit {limit:.2f} tok/s "
                f"({bandwidth:.1f} GB/s / {weight_gb:.2f} GB) = ours {od / limit:.2f} of the limit",
                flush=True,
            )


if __name__ == "__main__":
    main()
