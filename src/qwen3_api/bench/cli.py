"""`qwen3-api bench`: drive a running server with the load generator and print vLLM-style metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import httpx
import typer

from qwen3_api.bench.apis import ApiKind
from qwen3_api.bench.loadgen import LoadConfig, NoAcceptedStyle, run_benchmark
from qwen3_api.bench.metrics import format_result


def _served_model(url: str) -> str:
    """The model a server names at `/` (the original contract), for the plot's title."""
    try:
        return str(httpx.get(url.rstrip("/") + "/", timeout=10, trust_env=False).json()["model"])
    except (httpx.HTTPError, ValueError, KeyError):
        return "the served model"


def bench_command(
    url: Annotated[str, typer.Option(help="server base URL")] = "http://127.0.0.1:2025",
    api: Annotated[ApiKind, typer.Option(help="which API to drive")] = ApiKind.NATIVE,
    model: Annotated[str | None, typer.Option(help="model name to send (OpenAI APIs)")] = None,
    num_requests: Annotated[int, typer.Option(help="requests to send (after one warm-up)")] = 16,
    concurrency: Annotated[
        list[int] | None,
        typer.Option(help="requests in flight at once; repeat it for a sweep: --concurrency 1 --concurrency 4"),
    ] = None,
    prompt_tokens: Annotated[int, typer.Option(help="prompt length in tokens")] = 64,
    output_tokens: Annotated[int, typer.Option(help="tokens to generate per request")] = 64,
    ignore_eos: Annotated[
        bool, typer.Option("--ignore-eos/--no-ignore-eos", help="ask to ignore end tokens")
    ] = True,
    tokenizer: Annotated[
        Path | None, typer.Option(help="model dir whose tokenizer makes exact-length prompts")
    ] = None,
    seed: Annotated[
        int, typer.Option(help="seed of the random prompts; a sweep's levels use seed, seed + 1, ... (fresh prompts)")
    ] = 0,
    timeout: Annotated[float, typer.Option(help="seconds one request may take")] = 1800.0,
    json_out: Annotated[Path | None, typer.Option(help="also write the result as JSON here")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="also draw tokens/s, TTFT and TPOT vs concurrency as a PNG here")
    ] = None,
) -> None:
    """Send N requests at concurrency C to a running server and print throughput, TTFT, TPOT and ITL."""
    results = []
    # Every level sends prompts of its own: repeated ones would be answered by the server's response cache or skip
    # prefill through its prefix cache, and the later levels would measure the caches instead of generation.
    for index, level in enumerate(concurrency or [1]):
        try:
            config = LoadConfig(
                url=url, api=api, model=model, num_requests=num_requests, concurrency=level,
                prompt_tokens=prompt_tokens, output_tokens=output_tokens, ignore_eos=ignore_eos,
                tokenizer_dir=tokenizer, seed=seed + index, timeout_s=timeout,
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
        results.append(result)
    if json_out is not None:
        dicts = [r.to_dict() for r in results]
        json_out.write_text(json.dumps(dicts[0] if len(dicts) == 1 else dicts, indent=2, allow_nan=True))
    if plot is not None:
        from qwen3_api.bench.plot import PlotUnavailable, plot_results

        served = results[0].model or _served_model(url)
        subtitle = (f"{api.value} API, {prompt_tokens}-token prompts, {output_tokens} output tokens, "
                    f"{num_requests} requests per point")  # fmt: skip
        try:
            typer.echo(f"plot written to {plot_results({url: results}, plot, served, subtitle)}")
        except PlotUnavailable as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
    if any(r.completed == 0 for r in results):
        raise typer.Exit(1)
