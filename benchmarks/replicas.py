"""Scaling out: 1 replica vs 2 replicas (aggregate tokens/s), and prefix-aware vs random routing (multi-turn chat).

    python benchmarks/replicas.py                             # tiny and 0.6b shapes, c=8
    python benchmarks/replicas.py --shapes tiny --requests 16 # smoke

Same load, side by side in one run, on our torch engine:
1. Throughput, per shape: `--concurrency` clients send `--requests` distinct /v1/completions requests of
   `--max-tokens` tokens (ignore_eos) to today's single process, then to `--replicas 2` on a local Ray cluster
   (one CPU per replica). Printed: aggregate generated tokens/s of each and the ratio. On a 2-core machine both
   setups share the same two cores, so expect ~1x there: replicas add throughput where they add hardware.
2. Routing, `--routing-shape` (0.6b: its prefill is what a cache hit saves), for each of `--routing-replicas`
   (2,4; the replicas share the machine's cores): `--conversations` chats, each opened by its own ~1,500-character
   document, run `--turns` turns concurrently (each turn resends the whole conversation, streamed); once with
   `--routing prefix`, once with `--routing random`. Each replica's KV cache holds `--kv-headroom` (1.3) times its
   share of the conversations at their last turn: what a deployment sized for its load has, and what random
   routing, which spreads every conversation over every replica, overflows. Printed: TTFT p50 of the turns after
   the first and the prefix hit rate (prompt tokens served from the replicas' KV prefix caches, from their merged
   /metrics), and what random routing would hit with unbounded caches: a later turn finds the longest history it
   left on the replica it is sent to, and since the document is most of every prompt, any earlier turn there is
   most of a hit. On 2 replicas that is ~70 % of the best case for 4 turns, so no router can be 2x random's there;
   the targets (prefix-aware hit rate >= 2x random's, TTFT p50 <= 0.5x random's) are read at 4 replicas.
Timings on 2 shared cores collapse when other work competes: say so when the machine was not idle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from qwen3_api.bench.server_process import ServerProcess, free_port
from qwen3_api.demo_models.checkpoints import cached_test_model

WORDS = [
    "river",
    "stone",
    "lantern",
    "orbit",
    "velvet",
    "copper",
    "meadow",
    "signal",
    "harbor",
    "ember",
    "glacier",
    "pepper",
    "violet",
    "anchor",
]


def start(
    model: Path, log_dir: Path, name: str, extra: list[str], replicas: int, kv_gib: float = 0.25
) -> ServerProcess:
    port = free_port()
    command = [sys.executable, "-m", "qwen3_api.cli", "serve", "--model", str(model), "--port", str(port),
               "--backend", "torch", "--quantize", "none", "--max-model-len", "4096", "--response-cache-mb", "0",
               "--kv-cache-memory", f"{kv_gib:.4f}", *extra]  # fmt: skip
    server = ServerProcess(name, command, port, ["/health"], log_dir / f"{name}.log")
    server.start()
    try:
        server.wait_ready(1800)
        deadline = time.monotonic() + 1800
        while loaded_replicas(server.url) < replicas:  # /health is 200 with one replica: wait for all of them
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: {replicas} replicas not loaded:\n{server.log_tail()}")
            time.sleep(2)
    except BaseException:
        stop(server)
        raise
    return server


def stop(server: ServerProcess) -> None:
    """SIGTERM the server alone first: it deletes its Serve application and stops its Ray cluster itself (a
    signal to the whole process group would kill Ray's processes under it first)."""
    process = server._process
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=120)
    server.stop(10)


def metric_samples(url: str, name: str) -> list[Any]:
    text = httpx.get(f"{url}/metrics", timeout=60).text
    return [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


def metric_sum(url: str, name: str) -> float:
    return sum(sample.value for sample in metric_samples(url, name))


def decisions_by_replica(url: str) -> dict[str, float]:
    """Requests the ingress's router sent to each replica (its routing decisions; probes not counted)."""
    counts: dict[str, float] = {}
    for sample in metric_samples(url, "qwen3_api_router_decisions_total"):
        counts[sample.labels["replica"]] = counts.get(sample.labels["replica"], 0) + sample.value
    return counts


def loaded_replicas(url: str) -> int:
    try:
        return int(metric_sum(url, "qwen3_api_model_loaded"))
    except httpx.HTTPError:
        return 0


async def throughput(url: str, model: str, requests: int, concurrency: int, max_tokens: int) -> float:
    """Aggregate generated tokens per second of `requests` distinct completions, `concurrency` at a time."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    tokens = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens
        while not queue.empty():
            i = queue.get_nowait()
            body = {"model": model, "prompt": f"{i}: " + " ".join(random.Random(i).choices(WORDS, k=40)),
                    "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.7}  # fmt: skip
            response = await http.post("/v1/completions", json=body)
            response.raise_for_status()
            tokens += response.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(base_url=url, timeout=1800) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        return tokens / (time.perf_counter() - started)


def kv_bytes_per_token(model: Path) -> int:
    """KV bytes one token takes in our torch engine (keys and values of every layer, in the model's dtype)."""
    config = json.loads((model / "config.json").read_text())
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    dtype_bytes = {"float32": 4, "bfloat16": 2, "float16": 2}[config.get("torch_dtype", "float32")]
    return 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * dtype_bytes


def conversation_tokens(model: Path, conversations: int, turns: int, max_tokens: int) -> int:
    """Prompt tokens of the last turn of the longest conversation (its document, every question and answer)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    longest = 0
    for index in range(conversations):
        messages = [{"role": "user", "content": opening(index)}]
        for turn in range(1, turns):
            messages += [{"role": "assistant", "content": " ".join(["word"] * max_tokens)},
                         {"role": "user", "content": follow_up(turn)}]  # fmt: skip
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        longest = max(longest, len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return longest + max_tokens


def opening(index: int) -> str:
    document = " ".join(random.Random(1000 + index).choices(WORDS, k=220))
    return f"Document {index}: {document}\nSummarize it."


def follow_up(turn: int) -> str:
    return f"Now tell me more about point {turn}."


async def chat_workload(url: str, model: str, conversations: int, turns: int, max_tokens: int) -> list[float]:
    """TTFTs of every turn after the first, all conversations running at once."""
    ttfts: list[float] = []

    async def conversation(http: httpx.AsyncClient, index: int) -> None:
        messages = [{"role": "user", "content": opening(index)}]
        for turn in range(turns):
            body = {"model": model, "messages": messages, "max_tokens": max_tokens, "ignore_eos": True,
                    "temperature": 0.7, "stream": True}  # fmt: skip
            started, first, text = time.perf_counter(), None, []
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
                    if delta:
                        first = first or time.perf_counter()
                        text.append(delta)
            if turn > 0 and first is not None:
                ttfts.append(first - started)
            messages += [{"role": "assistant", "content": "".join(text)},
                         {"role": "user", "content": follow_up(turn + 1)}]  # fmt: skip

    async with httpx.AsyncClient(base_url=url, timeout=1800) as http:
        await asyncio.gather(*(conversation(http, i) for i in range(conversations)))
    return ttfts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["tiny", "0.6b"])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--routing-shape", default="0.6b")
    parser.add_argument("--routing-replicas", type=lambda t: [int(x) for x in t.split(",")], default=[2, 4],
                        help="replica counts of the routing runs (they share the machine's cores)")
    parser.add_argument("--kv-headroom", type=float, default=1.3, help="KV per replica / its share of the chats")
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    print(f"logs: {log_dir}")
    if not args.skip_throughput:
        for shape in args.shapes:
            model = cached_test_model(shape)
            rates = {}
            for name, extra, replicas in (("1 replica", [], 1), ("2 replicas", ["--replicas", "2"], 2)):
                server = start(model, log_dir, f"{shape}-{replicas}", extra, replicas)
                try:
                    rates[name] = asyncio.run(throughput(server.url, str(model), args.requests, args.concurrency,
                                                         args.max_tokens))  # fmt: skip
                finally:
                    stop(server)
            print(f"{shape}: c={args.concurrency}, {args.requests} x {args.max_tokens} tokens: 1 replica "
                  f"{rates['1 replica']:.1f} tok/s, 2 replicas {rates['2 replicas']:.1f} tok/s, "
                  f"ratio {rates['2 replicas'] / rates['1 replica']:.2f}x", flush=True)  # fmt: skip
    model = cached_test_model(args.routing_shape)
    tokens = conversation_tokens(model, args.conversations, args.turns, args.max_tokens)
    for replicas in args.routing_replicas:
        routing_run(model, log_dir, args, tokens, replicas)


def random_hit_fraction(turns: int, replicas: int) -> float:
    """Of the hits prefix-aware routing can get on turns 2..`turns`, the share random routing gets with unbounded
    caches, counting a hit as whole when any earlier turn of the conversation ran on the replica picked (the
    document dominates every prompt: an upper bound on random's share)."""
    miss = 1 - 1 / replicas
    return sum(1 - miss ** (turn - 1) for turn in range(2, turns + 1)) / (turns - 1)


def routing_run(model: Path, log_dir: Path, args: argparse.Namespace, tokens: int, replicas: int) -> None:
    share = -(-args.conversations // replicas) * tokens  # tokens of the conversations one replica holds, partitioned
    kv_gib = args.kv_headroom * share * kv_bytes_per_token(model) / 2**30
    cpus = (os.cpu_count() or 1) / replicas
    print(f"routing: {args.routing_shape}, {replicas} replicas ({cpus:g} CPU each), {args.conversations} chats x "
          f"{args.turns} turns, up to {tokens} tokens each; KV per replica {kv_gib:.3f} GiB = {args.kv_headroom:g} x "
          f"its share ({share} tokens); random routing with unbounded caches would get at most "
          f"{random_hit_fraction(args.turns, replicas):.0%} of the best case's hits", flush=True)  # fmt: skip
    results = {}
    for routing in ("prefix", "random"):
        extra = ["--replicas", str(replicas), "--replica-cpus", f"{cpus:g}", "--routing", routing]
        server = start(model, log_dir, f"routing-{replicas}-{routing}", extra, replicas, kv_gib)
        try:
            queried0 = metric_sum(server.url, "qwen3_api_engine_prefix_queried_tokens_total")
            hit0 = metric_sum(server.url, "qwen3_api_engine_prefix_hit_tokens_total")
            ttfts = asyncio.run(chat_workload(server.url, str(model), args.conversations, args.turns, args.max_tokens))
            queried = metric_sum(server.url, "qwen3_api_engine_prefix_queried_tokens_total") - queried0
            hits = metric_sum(server.url, "qwen3_api_engine_prefix_hit_tokens_total") - hit0
            results[routing] = (statistics.median(ttfts), hits / queried if queried else 0.0)
            spread = sorted(decisions_by_replica(server.url).values(), reverse=True)
        finally:
            stop(server)
        print(f"{replicas} replicas, routing {routing}: TTFT p50 {results[routing][0] * 1000:.0f} ms (turns "
              f"2..{args.turns}), prefix hit rate {results[routing][1]:.2f}, requests per replica {spread}",
              flush=True)  # fmt: skip
    (p_ttft, p_hit), (r_ttft, r_hit) = results["prefix"], results["random"]
    print(f"{replicas} replicas, prefix-aware vs random: hit rate {p_hit / r_hit if r_hit else float('inf'):.2f}x "
          f"(target >= 2x), TTFT p50 {p_ttft / r_ttft:.2f}x (target <= 0.5x)", flush=True)  # fmt: skip

if __name__ == "__main__":
    main()
