"""The `qwen3-api` command: serve, run, chat, download, make-test-model, bench."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from qwen3_api.bench.cli import bench_command
from qwen3_api.config import Settings
from qwen3_api.logging_setup import configure_logging as configure_server_logging

app = typer.Typer(
    help="Serve Qwen3 models: the original /generate API on our own batching engine.", no_args_is_help=True
)


ENGINE_DEATH_GRACE_SECONDS = 1.0  # the server answers 503 this long after the engine loop's death, then exits
ENGINE_DEATH_EXIT_SECONDS = 8.0  # the process is gone within 10 s of the engine loop's death


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _settings(**flags: Any) -> Settings:
    """Flags given on the command line override QWEN3_API_* environment variables, which override defaults."""
    try:
        return Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValueError as exc:
        typer.echo(f"error: invalid settings: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command()
def serve(
    model: Annotated[Optional[str], typer.Option(help="HF repo id, local model dir, or test:tiny")] = None,
    host: Annotated[Optional[str], typer.Option(help="listen address [default 127.0.0.1]")] = None,
    port: Annotated[Optional[int], typer.Option(help="listen port [default 2025]")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto|cpu|cuda")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="auto|float32|bfloat16|float16")] = None,
    backend: Annotated[Optional[str], typer.Option(help="auto|torch|llamacpp|reference")] = None,
    quantize: Annotated[
        Optional[str], typer.Option(help="auto|none|int8 (torch)|q8_0|q4_k_m|q4_0 (GGUF on llama.cpp)")
    ] = None,
    max_num_seqs: Annotated[Optional[int], typer.Option(help="sequences decoded together")] = None,
    max_num_batched_tokens: Annotated[Optional[int], typer.Option(help="token budget per step")] = None,
    kv_cache_memory: Annotated[Optional[float], typer.Option(help="KV cache budget in GiB")] = None,
    max_model_len: Annotated[Optional[int], typer.Option(help="context limit")] = None,
    enable_prefix_caching: Annotated[
        Optional[bool], typer.Option(help="reuse the KV of repeated prompt prefixes [default on]")
    ] = None,
    max_num_return_sequences: Annotated[Optional[int], typer.Option(help="cap of num_return_sequences")] = None,
    log_level: Annotated[Optional[str], typer.Option(help="debug|info|warning|error")] = None,
    max_queued_requests: Annotated[
        Optional[int], typer.Option(help="unfinished sequences beyond which requests get 503 [default 256]")
    ] = None,
    max_request_bytes: Annotated[
        Optional[int], typer.Option(help="larger request bodies get 413 [default 8 MiB]")
    ] = None,
    api_key: Annotated[
        Optional[list[str]], typer.Option(help="accepted API key (repeatable); env QWEN3_API_API_KEYS: a,b")
    ] = None,
    api_key_file: Annotated[Optional[Path], typer.Option(help="file of accepted API keys, one per line")] = None,
    cors_origins: Annotated[
        Optional[list[str]], typer.Option(help="allowed browser origin (repeatable or comma-separated; * for any)")
    ] = None,
    log_format: Annotated[Optional[str], typer.Option(help="text|json (JSON lines) [default text]")] = None,
    grammar_compile_timeout: Annotated[
        Optional[float], typer.Option(help="seconds a JSON schema may take to compile, else 400 [default 10]")
    ] = None,
    request_timeout: Annotated[
        Optional[float], typer.Option(help="seconds before a request is aborted (504) [default 600; 0: none]")
    ] = None,
    shutdown_timeout: Annotated[
        Optional[float], typer.Option(help="seconds in-flight requests get after SIGTERM [default 30]")
    ] = None,
    responses_store_size: Annotated[
        Optional[int], typer.Option(help="responses kept for previous_response_id (LRU) [default 1000]")
    ] = None,
    # llama.cpp backend: CPU performance and context
    kv_cache_dtype: Annotated[Optional[str], typer.Option(help="llama.cpp KV cells: f16|q8_0")] = None,
    llamacpp_kv_memory_share: Annotated[
        Optional[float], typer.Option(help="share of available memory for llama.cpp KV [default 0.5]")
    ] = None,
    llamacpp_kv_unified: Annotated[
        Optional[bool], typer.Option(help="one KV pool for all llama.cpp sequences [auto: off if all fit in full]")
    ] = None,
    llamacpp_retained_sequences: Annotated[
        Optional[int], typer.Option(help="finished conversations kept in the llama.cpp pool [0]")
    ] = None,
    llamacpp_host_cache_memory: Annotated[
        Optional[float],
        typer.Option(help="GiB of host memory for finished chats' llama.cpp KV (default: 1/4 of free, <= 8); 0: off"),
    ] = None,
    llamacpp_flash_attention: Annotated[Optional[str], typer.Option(help="auto|on|off")] = None,
    llamacpp_threads: Annotated[Optional[int], typer.Option(help="llama.cpp decode threads")] = None,
    llamacpp_threads_batch: Annotated[Optional[int], typer.Option(help="llama.cpp prefill threads")] = None,
    llamacpp_ubatch: Annotated[Optional[int], typer.Option(help="llama.cpp physical batch (tokens)")] = None,
    llamacpp_weight_repack: Annotated[Optional[str], typer.Option(help="auto|on|cpu|off")] = None,
    speculative: Annotated[Optional[str], typer.Option(help="off|ngram (prompt-lookup drafts, llamacpp)")] = None,
    num_speculative_tokens: Annotated[Optional[int], typer.Option(help="drafts per sequence per step [5]")] = None,
    ngram_min: Annotated[Optional[int], typer.Option(help="shortest n-gram looked up for drafts [2]")] = None,
    ngram_max: Annotated[Optional[int], typer.Option(help="longest n-gram looked up for drafts [4]")] = None,
    speculative_max_batch: Annotated[
        Optional[int], typer.Option(help="speculate while at most this many sequences decode [2]")
    ] = None,
    gguf_cache_dir: Annotated[Optional[Path], typer.Option(help="cache of checkpoints converted to GGUF")] = None,
    response_cache_mb: Annotated[
        Optional[float], typer.Option(help="response cache budget in MiB (greedy/seeded requests); 0: off [256]")
    ] = None,
    response_cache_ttl: Annotated[Optional[float], typer.Option(help="seconds a cached response lives [3600]")] = None,
    prefix_cache_dir: Annotated[
        Optional[Path], typer.Option(help="keep hot cached prefixes here across restarts (torch, llamacpp)")
    ] = None,
    prefix_cache_dir_mb: Annotated[
        Optional[float], typer.Option(help="most MiB the prefix cache directory holds [2048]")
    ] = None,
    prefix_cache_save_interval: Annotated[
        Optional[float], typer.Option(help="seconds between background prefix cache snapshots [300]")
    ] = None,
    # scaling out on Ray Serve (pip install qwen3-api[ray])
    replicas: Annotated[Optional[int], typer.Option(help="engine replicas on Ray Serve behind one ingress [1]")] = None,
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster to join; default: start a local one")] = None,
    min_replicas: Annotated[Optional[int], typer.Option(help="autoscaling: fewest replicas")] = None,
    max_replicas: Annotated[Optional[int], typer.Option(help="autoscaling: most replicas")] = None,
    autoscale_target_ongoing_requests: Annotated[
        Optional[float], typer.Option(help="autoscaling: requests in flight per replica to aim for [8]")
    ] = None,
    replica_cpus: Annotated[Optional[float], typer.Option(help="CPUs reserved per replica [1]")] = None,
    replica_gpus: Annotated[Optional[float], typer.Option(help="GPUs reserved per replica [0]")] = None,
    routing: Annotated[Optional[str], typer.Option(help="prefix|random replica choice [prefix]")] = None,
    route_overload_slack: Annotated[Optional[int], typer.Option(help="see the README's Scaling out [4]")] = None,
    route_overload_ratio: Annotated[Optional[float], typer.Option(help="see the README's Scaling out [1.5]")] = None,
    route_min_match_ratio: Annotated[Optional[float], typer.Option(help="see the README's Scaling out [0.1]")] = None,
) -> None:
    """Start the HTTP server; it listens at once and loads the model in the background."""
    import uvicorn

    from qwen3_api.server.app import create_app
    from qwen3_api.server.lifecycle import FLUSH_SECONDS, GracefulServer

    settings = _settings(
        model=model, host=host, port=port, device=device, dtype=dtype, backend=backend, quantize=quantize,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens, kv_cache_memory=kv_cache_memory, max_model_len=max_model_len,
        enable_prefix_caching=enable_prefix_caching, max_num_return_sequences=max_num_return_sequences,
        log_level=log_level,
        max_queued_requests=max_queued_requests, max_request_bytes=max_request_bytes,
        api_keys=tuple(api_key) if api_key else None, api_key_file=api_key_file,
        cors_origins=",".join(cors_origins) if cors_origins else None,
        log_format=log_format, grammar_compile_timeout=grammar_compile_timeout,
        request_timeout=request_timeout, shutdown_timeout=shutdown_timeout,
        responses_store_size=responses_store_size,
        kv_cache_dtype=kv_cache_dtype, llamacpp_kv_memory_share=llamacpp_kv_memory_share,
        llamacpp_kv_unified=llamacpp_kv_unified, llamacpp_retained_sequences=llamacpp_retained_sequences,
        llamacpp_host_cache_memory=llamacpp_host_cache_memory, llamacpp_flash_attention=llamacpp_flash_attention,
        llamacpp_threads=llamacpp_threads, llamacpp_threads_batch=llamacpp_threads_batch,
        llamacpp_ubatch=llamacpp_ubatch, llamacpp_weight_repack=llamacpp_weight_repack,
        speculative=speculative, num_speculative_tokens=num_speculative_tokens, ngram_min=ngram_min,
        ngram_max=ngram_max, speculative_max_batch=speculative_max_batch,
        gguf_cache_dir=gguf_cache_dir,
        response_cache_mb=response_cache_mb, response_cache_ttl=response_cache_ttl,
        prefix_cache_dir=prefix_cache_dir, prefix_cache_dir_mb=prefix_cache_dir_mb,
        prefix_cache_save_interval=prefix_cache_save_interval,
        replicas=replicas, ray_address=ray_address, min_replicas=min_replicas, max_replicas=max_replicas,
        autoscale_target_ongoing_requests=autoscale_target_ongoing_requests, replica_cpus=replica_cpus,
        replica_gpus=replica_gpus, routing=routing, route_overload_slack=route_overload_slack,
        route_overload_ratio=route_overload_ratio, route_min_match_ratio=route_min_match_ratio,
    )  # fmt: skip
    configure_server_logging(settings.log_level, settings.log_format)
    if settings.scaled_out:
        _serve_scaled_out(settings)
        return
    server: uvicorn.Server | None = None
    engine_died = False

    def stop_on_failure() -> None:
        if server is not None:
            server.should_exit = True

    def exit_on_engine_death() -> None:
        # Every request already has its error; exit non-zero so a supervisor restarts the process. If closing the
        # connections hangs, the watchdog ends the process anyway, within ENGINE_DEATH_EXIT_SECONDS.
        nonlocal engine_died
        engine_died = True
        # /health and /live answer 503 meanwhile, so probes see the death before the port closes.
        asyncio.get_running_loop().call_later(ENGINE_DEATH_GRACE_SECONDS, stop_on_failure)
        watchdog = threading.Timer(ENGINE_DEATH_EXIT_SECONDS, os._exit, args=(1,))
        watchdog.daemon = True
        watchdog.start()

    application = create_app(settings, on_load_failure=stop_on_failure, on_engine_death=exit_on_engine_death)
    # log_config=None: uvicorn's loggers go through ours (request ids, JSON); its access log is replaced by ours.
    config = uvicorn.Config(
        application, host=settings.host, port=settings.port, log_level=settings.log_level, log_config=None,
        access_log=False, timeout_graceful_shutdown=int(FLUSH_SECONDS),
    )  # fmt: skip
    server = GracefulServer(config, application.state.server, settings.shutdown_timeout)
    server.run()
    if engine_died:
        # Skip interpreter finalization: with a broken engine it can hang (daemon threads, C extensions' teardown),
        # and the watchdog's daemon thread is frozen once finalization starts.
        logging.shutdown()
        sys.stderr.flush()
        os._exit(1)
    if application.state.server.load_error:
        raise typer.Exit(1)


def _serve_scaled_out(settings: Settings) -> None:
    try:
        from qwen3_api.scaleout.launcher import serve_replicas
    except ImportError as exc:  # ray is an optional extra
        typer.echo(f"error: --replicas > 1 and --ray-address need Ray Serve: pip install 'qwen3-api[ray]' ({exc})",
                   err=True)  # fmt: skip
        raise typer.Exit(2) from exc
    serve_replicas(settings)


@app.command("make-test-model")
def make_test_model(
    out_dir: Annotated[Path, typer.Argument(help="directory to write the model to")],
    shape: Annotated[str, typer.Option(help="tiny|0.6b|4b")] = "tiny",
    seed: Annotated[int, typer.Option(help="random seed of the weights")] = 0,
    dtype: Annotated[str, typer.Option(help="float32|bfloat16|float16")] = "float32",
    init_std: Annotated[float, typer.Option(help="std of the random matrices")] = 0.02,
    num_layers: Annotated[Optional[int], typer.Option(help="override the shape's layer count")] = None,
    gguf: Annotated[
        Optional[str], typer.Option(help="also write DIR/<dir name>-<type>.gguf for llama.cpp: F32|F16|Q8_0|Q4_0")
    ] = None,
) -> None:
    """Build a model directory: the real Qwen3 tokenizer and seeded random weights in a real Qwen3 shape."""
    from qwen3_api.demo_models.checkpoints import build_test_model
    from qwen3_api.demo_models.gguf import gguf_file_name, parse_gguf_type, write_gguf

    configure_logging("info")
    if out_dir.exists() and any(out_dir.iterdir()):
        typer.echo(f"error: {out_dir} exists and is not empty", err=True)
        raise typer.Exit(2)
    try:
        qtype = parse_gguf_type(gguf) if gguf is not None else None
        if out_dir.exists():
            out_dir.rmdir()
        path = build_test_model(out_dir, shape=shape, seed=seed, dtype=dtype, init_std=init_std, num_layers=num_layers)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"wrote {shape} test model to {path}")
    if qtype is not None:
        gguf_path = write_gguf(path, path / gguf_file_name(path, qtype), qtype)
        typer.echo(f"wrote {qtype} GGUF to {gguf_path}")


@app.command()
def download(
    model: Annotated[str, typer.Argument(help="HF repo id (or test:<shape>) to fetch into the local cache")],
) -> None:
    """Fetch a model into the HF cache ahead of time, so `serve` starts without downloading."""
    from qwen3_api.errors import ModelLoadError
    from qwen3_api.runtime.source import canonical_model_name, resolve_model

    configure_logging("info")
    try:
        path = resolve_model(canonical_model_name(model))
    except ModelLoadError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"{model} is at {path}")


@app.command()
def chat(
    url: Annotated[str, typer.Option(help="server base URL")] = "http://127.0.0.1:2025",
    system: Annotated[Optional[str], typer.Option(help="system prompt")] = None,
    thinking: Annotated[Optional[bool], typer.Option("--thinking/--no-thinking", help="Qwen3 thinking mode")] = None,
    max_tokens: Annotated[int, typer.Option(help="most tokens per answer")] = 1024,
    api_key: Annotated[
        Optional[str], typer.Option(envvar="QWEN3_API_KEY", help="sent as Authorization: Bearer KEY")
    ] = None,
) -> None:
    """Chat with a running server in the terminal (/help lists the commands, /exit or Ctrl-D quits)."""
    from rich.console import Console

    from qwen3_api.terminal.session import ChatSession, HttpTransport
    from qwen3_api.terminal.ui import ChatUI, default_history_path

    console = Console(highlight=False)
    try:
        transport = HttpTransport(url, api_key)
    except Exception as exc:  # connection refused, not our server, ...: one line, no traceback
        console.print(f"[red]cannot reach a qwen3-api server at {url}: {exc}[/red]")
        raise typer.Exit(1) from exc
    session = ChatSession(transport, system, thinking, max_tokens)
    try:
        ChatUI(session, console, default_history_path()).run()
    finally:
        session.close()


@app.command()
def run(
    model: Annotated[str, typer.Argument(help="HF repo id, local model dir, GGUF, or test:tiny")],
    system: Annotated[Optional[str], typer.Option(help="system prompt")] = None,
    thinking: Annotated[Optional[bool], typer.Option("--thinking/--no-thinking", help="Qwen3 thinking mode")] = None,
    max_tokens: Annotated[int, typer.Option(help="most tokens per answer")] = 1024,
    device: Annotated[Optional[str], typer.Option(help="auto|cpu|cuda")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="auto|float32|bfloat16|float16")] = None,
    backend: Annotated[Optional[str], typer.Option(help="auto|torch|llamacpp|reference")] = None,
    quantize: Annotated[Optional[str], typer.Option(help="none|int8 (torch backend)")] = None,
    max_model_len: Annotated[Optional[int], typer.Option(help="context limit")] = None,
    kv_cache_memory: Annotated[Optional[float], typer.Option(help="KV cache budget in GiB")] = None,
) -> None:
    """Load MODEL in this process and chat with it, without a server (the engine and defaults of `serve`)."""
    from rich.console import Console

    from qwen3_api.terminal.loading import load_with_progress
    from qwen3_api.terminal.session import ChatSession, InProcessTransport
    from qwen3_api.terminal.ui import ChatUI, default_history_path

    settings = _settings(
        model=model, device=device, dtype=dtype, backend=backend, quantize=quantize, max_model_len=max_model_len,
        kv_cache_memory=kv_cache_memory,
    )  # fmt: skip
    console = Console(highlight=False)
    engine = load_with_progress(settings, console)
    if engine is None:
        raise typer.Exit(1)
    session = ChatSession(InProcessTransport(engine, settings), system, thinking, max_tokens)
    try:
        ChatUI(session, console, default_history_path()).run()
    finally:
        session.close()


app.command("bench")(bench_command)


if __name__ == "__main__":
    app()
