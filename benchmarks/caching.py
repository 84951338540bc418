"""Caching across requests: response cache hit vs miss latency for /generate and chat, side by side in one run.

    python benchmarks/caching.py                          # 0.6b shape, 64 output tokens, 3 prompts per route
    python benchmarks/caching.py --shape tiny --prompts 2 # smoke
    python benchmarks/caching.py --skip-response-cache --restart-backends llamacpp  # one backend's restart only

For each route, each of `--prompts` distinct greedy prompts is sent once (a miss: the engine computes 64 tokens)
and then `--repeats` more times (hits: answered from the response cache). Printed: p50 latency of misses and hits
and their ratio. Targets (issue 11, idle machine): a hit <= 5 ms p50 and >= 100x faster than its miss.
Then, for each of `--restart-backends` (torch, and llama.cpp: the checkpoint converted to its Q8_0 GGUF, the
default CPU path), the TTFT of a 2,000-token system prompt on a server restarted with `--prefix-cache-dir` (the
first server wrote it at shutdown) against one started without it (target <= 0.2x). Timings on 2 cores collapse
when another process competes: say so when the machine was not idle.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from qwen3_api.bench.prompts import PromptBuilder
from qwen3_api.bench.server_process import ServerProcess, free_port
from qwen3_api.demo_models.checkpoints import cached_test_model


def start_server(model_dir: Path, log_dir: Path, name: str, extra: list[str]) -> ServerProcess:
    port = free_port()
    command = [sys.executable, "-m", "qwen3_api.cli", "serve", "--model", str(model_dir), "--port", str(port),
               "--max-model-len", "4096", *extra]  # fmt: skip
    server = ServerProcess(name, command, port, ["/health"], log_dir / f"{name}.log")
    server.start()
    server.wait_ready(1800)
    return server


def timed_post(client: httpx.Client, path: str, body: dict[str, Any]) -> tuple[float, str]:
    started = time.perf_counter()
    response = client.post(path, json=body)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, response.headers.get("x-cache", "")


def measure_route(client: httpx.Client, route: str, bodies: list[dict[str, Any]], repeats: int) -> dict[str, Any]:
    misses, hits = [], []
    for body in bodies:
        elapsed, status = timed_post(client, route, body)
        if status != "miss":
            raise RuntimeError(f"{route}: the first request was {status!r}, not a miss")
        misses.append(elapsed)
        for _ in range(repeats):
            elapsed, status = timed_post(client, route, body)
            if status != "hit":
                raise RuntimeError(f"{route}: a repeat was {status!r}, not a hit")
            hits.append(elapsed)
    miss, hit = statistics.median(misses), statistics.median(hits)
    return {"route": route, "miss_p50_ms": miss * 1e3, "hit_p50_ms": hit * 1e3, "speedup": miss / hit,
            "misses": len(misses), "hits": len(hits)}  # fmt: skip


def response_cache_rows(model_dir: Path, log_dir: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    builder = PromptBuilder.from_tokenizer_dir(model_dir)
    prompts = [builder.prompt(args.prompt_tokens, 1000 + i) for i in range(args.prompts)]
    server = start_server(model_dir, log_dir, "response-cache", ["--backend", args.backend])
    try:
        with httpx.Client(base_url=server.url, timeout=1800, trust_env=False) as client:
            model = client.get("/v1/models").json()["data"][0]["id"]
            generate = [{"prompt": p, "max_length": args.output_tokens, "temperature": 0, "ignore_eos": True}
                        for p in prompts]  # fmt: skip
            chat = [{"model": model, "messages": [{"role": "user", "content": f"chat: {p}"}],
                     "max_tokens": args.output_tokens, "temperature": 0, "ignore_eos": True}
                    for p in prompts]  # fmt: skip
            rows = []
            for route, bodies in (("/generate", generate), ("/v1/chat/completions", chat)):
                row = measure_route(client, route, bodies, args.repeats)
                print(f"{row['route']:<24}{row['miss_p50_ms']:>14.1f}{row['hit_p50_ms']:>12.2f}"
                      f"{row['speedup']:>9.0f}x", flush=True)  # fmt: skip
                rows.append(row)
            return rows
    finally:
        server.stop()


def first_token_seconds(server: ServerProcess, system: str, question: str) -> tuple[float, int]:
    """Latency of a one-token chat answer (prefill + one token: the TTFT) and its cached prompt tokens."""
    with httpx.Client(base_url=server.url, timeout=3600, trust_env=False) as client:
        model = client.get("/v1/models").json()["data"][0]["id"]
        body = {"model": model, "max_tokens": 1, "temperature": 0,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]}  # fmt: skip
        started = time.perf_counter()
        response = client.post("/v1/chat/completions", json=body)
        elapsed = time.perf_counter() - started
        response.raise_for_status()
        return elapsed, int(response.json()["usage"]["prompt_tokens_details"]["cached_tokens"])


def restart_rows(
    model_dir: Path, log_dir: Path, args: argparse.Namespace, backend: str
) -> list[tuple[str, float, int]]:
    """TTFT of a long system prompt on a fresh server: restarted with the prefix cache directory, and without."""
    system = PromptBuilder.from_tokenizer_dir(model_dir).prompt(args.system_tokens, 7)
    directory = log_dir / f"prefixes-{backend}"
    # llama.cpp's KV budget defaults to a share of free memory; 1 GiB is torch's CPU default
    common = ["--backend", backend, "--response-cache-mb", "0", "--kv-cache-memory", "1"]
    rows = []
    for name, extra, question in (
        ("first start, cold", ["--prefix-cache-dir", str(directory)], "What is rule one?"),
        ("restart with --prefix-cache-dir", ["--prefix-cache-dir", str(directory)], "What is rule two?"),
        ("restart without it", [], "What is rule two?"),
    ):
        server = start_server(model_dir, log_dir, f"{backend}-{name.replace(' ', '-')}", [*common, *extra])
        try:
            elapsed, cached = first_token_seconds(server, system, question)
        finally:
            server.stop(grace_s=300)  # the first one writes its snapshot while it stops
        rows.append((name, elapsed, cached))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="0.6b", help="test model shape: tiny|0.6b|4b")
    parser.add_argument("--backend", default="torch", help="backend of the response cache part")
    parser.add_argument("--restart-backends", default="torch,llamacpp", help="backends of the restart part")
    parser.add_argument("--prompts", type=int, default=3, help="distinct prompts per route (one miss each)")
    parser.add_argument("--repeats", type=int, default=20, help="hits per prompt")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--system-tokens", type=int, default=2000, help="system prompt of the restart test")
    parser.add_argument("--skip-restart", action="store_true", help="only the response cache part")
    parser.add_argument("--skip-response-cache", action="store_true", help="only the restart part")
    parser.add_argument("--log-dir", type=Path, default=None, help="keep the servers' logs here")
    args = parser.parse_args()
    model_dir = cached_test_model(args.shape)
    with tempfile.TemporaryDirectory(prefix="bench-caching-") as tmp:
        log_dir = args.log_dir or Path(tmp)
        if not args.skip_response_cache:
            print(f"response cache, {args.shape} shape, backend {args.backend}, {args.prompt_tokens}-token prompts, "
                  f"{args.output_tokens} greedy output tokens", flush=True)  # fmt: skip
            print(f"{'route':<24}{'miss p50 ms':>14}{'hit p50 ms':>12}{'miss/hit':>10}")
            response_cache_rows(model_dir, log_dir, args)  # prints each route's row as it is measured
        backends = [] if args.skip_restart else [b for b in args.restart_backends.split(",") if b]
        for backend in backends:
            restarts = restart_rows(model_dir, log_dir, args, backend)
            print(f"\nbackend {backend}: TTFT of a {args.system_tokens}-token system prompt on a fresh server "
                  "(one-token chat answer)")  # fmt: skip
            print(f"{'server':<34}{'TTFT s':>10}{'cached tokens':>15}")
            for name, elapsed, cached in restarts:
                print(f"{name:<34}{elapsed:>10.2f}{cached:>15}")
            print(f"with the directory / without: {restarts[1][1] / restarts[2][1]:.3f}x", flush=True)


if __name__ == "__main__":
    main()
