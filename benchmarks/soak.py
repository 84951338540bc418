"""Soak: mixed loopback load at about twice the server's capacity; nothing may be lost, nothing may leak.

    python benchmarks/soak.py --minutes 10 --concurrency 32 [--model test:tiny] [--backend torch] [--url URL]

Starts `qwen3-api serve` (the tiny model by default; `--url` uses a running server instead), warms it up, then keeps
`--concurrency` clients busy with a mix of requests: /generate and /v1 chat and completions, streamed and not, some
clients that hang up early (mid-stream or while waiting), and some that send garbage (bad JSON, wrong types,
unknown model, a prompt past the context). Prints requests by outcome, p50/p99 latency of the good ones, the
server's RSS and KV blocks in use at start and end. Exits 1 if a request was lost (transport error, a stream
without [DONE]), got an unexpected status (5xx other than 503, 4xx on a good request, 2xx on garbage), or if the
KV blocks did not return to their starting count.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from qwen3_api.bench.server_process import ServerProcess, free_port

TOKENS = (8, 48)  # output tokens per good request, drawn uniformly
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards"]


@dataclass
class Tally:
    """Outcomes by kind, latencies of the good requests, and what went wrong."""

    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def bad(self, kind: str, what: str) -> None:
        self.outcomes[f"{kind}: UNEXPECTED {what}"] += 1
        if len(self.problems) < 20:
            self.problems.append(f"{kind}: {what}")


def prompt(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 60)))


def good_request(rng: random.Random, model: str) -> tuple[str, str, dict[str, object]]:
    """(kind, path, body) of a well-formed request."""
    tokens = rng.randint(*TOKENS)
    stream = rng.random() < 0.5
    choice = rng.random()
    if choice < 0.35:
        body: dict[str, object] = {"prompt": prompt(rng), "max_length": tokens, "temperature": 0.8, "stream": stream}
        return f"generate{'-stream' if stream else ''}", "/generate", body
    if choice < 0.7:
        messages = [{"role": "user", "content": prompt(rng)}]
        body = {"model": model, "messages": messages, "max_tokens": tokens, "stream": stream}
        return f"chat{'-stream' if stream else ''}", "/v1/chat/completions", body
    body = {"model": model, "prompt": prompt(rng), "max_tokens": tokens, "stream": stream}
    return f"completions{'-stream' if stream else ''}", "/v1/completions", body


def garbage_request(rng: random.Random, model: str) -> tuple[str, str, bytes]:
    """(kind, path, raw body) of a request the server must refuse with a 4xx."""
    cases: list[tuple[str, bytes]] = [
        ("/generate", b'{"prompt": "unterminated'),
        ("/generate", json.dumps({"prompt": "x", "temperature": "hot"}).encode()),
        ("/generate", json.dumps({"prompt": "x", "max_length": -3}).encode()),
        ("/v1/chat/completions", json.dumps({"model": "no-such-model", "messages": [{"role": "user"}]}).encode()),
        ("/v1/completions", json.dumps({"model": model, "prompt": "word " * 5000, "max_tokens": 4}).encode()),
        ("/v1/completions", b"\xff\xfe not json at all"),
    ]
    path, body = rng.choice(cases)
    return "garbage", path, body


async def read_stream(response: httpx.Response, hang_up_after: int | None) -> tuple[bool, str | None]:
    """(ended with [DONE], error event text); returns early (False, None) after `hang_up_after` events."""
    events = 0
    error = None
    async for line in response.aiter_lines():
        if not line.startswith("data: "):
            continue
        data = line.removeprefix("data: ")
        if data == "[DONE]":
            return True, error
        if '"error"' in data:
            error = data
        events += 1
        if hang_up_after is not None and events >= hang_up_after:
            return False, None
    return False, error


async def one_request(client: httpx.AsyncClient, rng: random.Random, model: str, tally: Tally) -> None:
    roll = rng.random()
    if roll < 0.1:
        kind, path, raw = garbage_request(rng, model)
        response = await client.post(path, content=raw, headers={"Content-Type": "application/json"})
        if 400 <= response.status_code < 500 or response.status_code == 503:
            tally.outcomes[f"garbage: {response.status_code}"] += 1
        else:
            tally.bad(kind, f"status {response.status_code} for garbage to {path}: {response.text[:120]}")
        return
    kind, path, body = good_request(rng, model)
    hang_up = roll < 0.2  # clients that leave early
    started = time.perf_counter()
    if body.get("stream"):
        async with client.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                await response.aread()
                record_status(tally, kind, response.status_code, response.text)
                return
            done, error = await read_stream(response, rng.randint(1, 3) if hang_up else None)
        if hang_up and not done:
            tally.outcomes[f"{kind}: hung up mid-stream"] += 1
        elif error is not None:
            tally.bad(kind, f"error event {error[:160]}")
        elif not done:
            tally.bad(kind, "stream ended without [DONE]")
        else:
            tally.outcomes[f"{kind}: 200"] += 1
            tally.latencies.append(time.perf_counter() - started)
        return
    if hang_up:
        try:
            await asyncio.wait_for(client.post(path, json=body), timeout=rng.uniform(0.05, 0.5))
        except TimeoutError:
            tally.outcomes[f"{kind}: hung up waiting"] += 1
            return
        tally.outcomes[f"{kind}: 200 before hang-up"] += 1
        return
    response = await client.post(path, json=body)
    record_status(tally, kind, response.status_code, response.text)
    if response.status_code == 200:
        tally.latencies.append(time.perf_counter() - started)


def record_status(tally: Tally, kind: str, status: int, text: str) -> None:
    if status in (200, 503):
        tally.outcomes[f"{kind}: {status}"] += 1
    else:
        tally.bad(kind, f"status {status}: {text[:160]}")


async def worker(url: str, model: str, seed: int, until: float, tally: Tally) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(300.0), trust_env=False) as client:
        while time.monotonic() < until:
            try:
                await one_request(client, rng, model, tally)
            except httpx.HTTPError as exc:  # a transport error: the request is lost
                tally.bad("transport", f"{type(exc).__name__}: {exc}")


def gauges(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10, trust_env=False).text
    wanted = {"qwen3_api_engine_kv_blocks_used", "qwen3_api_engine_running", "qwen3_api_engine_waiting",
              "qwen3_api_unfinished_requests"}  # fmt: skip
    pairs = (line.partition(" ") for line in text.splitlines())
    return {name: float(value) for name, _, value in pairs if name in wanted}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_idle(url: str, seconds: float) -> dict[str, float]:
    deadline = time.monotonic() + seconds
    values = gauges(url)
    while time.monotonic() < deadline and any(v for k, v in values.items() if k != "qwen3_api_engine_kv_blocks_used"):
        time.sleep(0.2)
        values = gauges(url)
    return values


async def run_load(url: str, model: str, concurrency: int, seconds: float, seed: int) -> Tally:
    tally = Tally()
    until = time.monotonic() + seconds
    await asyncio.gather(*(worker(url, model, seed * 1000 + i, until, tally) for i in range(concurrency)))
    return tally


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32, help="clients at once (default: twice 16 seqs)")
    parser.add_argument("--model", default="test:tiny")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--url", help="use this running server instead of starting one (RSS is then not read)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server-arg", action="append", default=[], help="extra `serve` argument (repeatable)")
    args = parser.parse_args()

    server = None
    if args.url is None:
        port = free_port()
        command = [
            sys.executable, "-m", "qwen3_api.cli", "serve", "--model", args.model, "--backend", args.backend,
            "--port", str(port), "--max-model-len", "2048", "--log-level", "warning", *args.server_arg,
        ]  # fmt: skip
        log = Path(tempfile.mkdtemp(prefix="soak-")) / "server.log"
        server = ServerProcess("qwen3-api", command, port, ["/health"], log)
        server.start()
        server.wait_ready(600)
        url = server.url
        print(f"server log: {log}")
    else:
        url = args.url
    pid = server._process.pid if server is not None and server._process is not None else None
    try:
        model = httpx.get(f"{url}/v1/models", timeout=10, trust_env=False).json()["data"][0]["id"]
        asyncio.run(run_load(url, model, 4, 5.0, seed=args.seed + 99))  # warm-up: allocator pools, first batches
        start_gauges = wait_idle(url, 60)
        start_rss = rss_mib(pid) if pid else float("nan")
        print(f"load: {args.concurrency} clients for {args.minutes:g} min against {url} ({model})")
        started = time.monotonic()
        tally = asyncio.run(run_load(url, model, args.concurrency, args.minutes * 60, args.seed))
        elapsed = time.monotonic() - started
        end_gauges = wait_idle(url, 60)
        end_rss = rss_mib(pid) if pid else float("nan")
    finally:
        if server is not None:
            server.stop()

    total = sum(tally.outcomes.values())
    print(f"\n{total} requests in {elapsed:.0f} s ({total / elapsed:.1f}/s)")
    for outcome, count in sorted(tally.outcomes.items()):
        print(f"  {count:7d}  {outcome}")
    if tally.latencies:
        lat = sorted(tally.latencies)
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        print(f"latency of good requests: p50 {statistics.median(lat):.2f} s, p99 {p99:.2f} s ({len(lat)} requests)")
    kv_start = start_gauges.get("qwen3_api_engine_kv_blocks_used", float("nan"))
    kv_end = end_gauges.get("qwen3_api_engine_kv_blocks_used", float("nan"))
    print(f"RSS: start {start_rss:.0f} MiB, end {end_rss:.0f} MiB ({(end_rss / start_rss - 1) * 100:+.1f} %)")
    print(f"KV blocks in use: start {kv_start:.0f}, end {kv_end:.0f}; engine at end: {end_gauges}")
    failed = bool(tally.problems) or kv_end != kv_start
    for problem in tally.problems:
        print(f"  problem: {problem}")
    print("FAIL" if failed else "PASS: nothing lost, no unexpected status, KV blocks back to baseline")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
