"""`qwen3-api bench`: drive a running server with the load generator and print vLLM-style metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from qwen3_api.bench.apis import ApiKind
from qwen3_api.bench.loadgen import LoadConfig, NoAcceptedStyle, run_benchmark
from qwen3_api.bench.metrics import format_result


def bench_command(
    url: Annotated[str, typer.Option(help="server base URL")] = "http://127.0.0.1:2025",
    api: Annotated[ApiKind, typer.Option(help="which API to drive")] = ApiKind.NATIVE,
    model: Annotated[str | None, typer.Option(help="model name to send (OpenAI APIs)")] = None,
    num_requests: Annotated[int, typer.Option(help="requests to send (after one warm-up)")] = 16,
    concurrency: Annotated[int, typer.Option(help="requests in flight at once")] = 1,
    prompt_tokens: Annotated[int, typer.Option(help="prompt length in tokens")] = 64,
    output_tokens: Annotated[int, typer.Option(help="tokens to generate per request")] = 64,
    ignore_eos: Annotated[
        bool, typer.Option("--ignore-eos/--no-ignore-eos", help="ask to ignore end tokens")
    ] = True,
    tokenizer: Annotated[
        Path | None, typer.Option(help="model dir whose tokenizer makes exact-length prompts")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the random prompts")] = 0,
    timeout: Annotated[float, typer.Option(help="seconds one request may take")] = 1800.0,
    json_out: Annotated[Path | None, typer.Option(help="also write the result as JSON here")] = None,
) -> None:
    """Send N requests at concurrency C to a running server and print throughput, TTFT, TPOT and ITL."""
    try:
        config = LoadConfig(
            url=url, api=api, model=model, num_requests=num_requests, concurrency=concurrency,
            prompt_tokens=prompt_tokens, output_tokens=output_tokens, ignore_eos=ignore_eos,
            tokenizer_dir=tokenizer, seed=seed, timeout_s=timeout,
        )  # fmt: skip
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        result = run_benchmark(config)
    except NoAcceptedStyle as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(format_result(result))
    if json_out is not None:
        json_out.write_text(json.dumps(result.to_dict(), indent=2, allow_nan=True))
    if result.completed == 0:
        raise typer.Exit(1)
