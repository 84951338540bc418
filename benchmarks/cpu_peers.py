"""CPU peers side by side, in one run on the same files: llama.cpp's C++ `llama-server`, OpenVINO GenAI, our
llama.cpp backend and our default path, with every ratio printed against its target.

    python benchmarks/cpu_peers.py                          # --preset quick: ~25 min on 2 idle cores
    python benchmarks/cpu_peers.py --preset full            # 0.6b and 4b, Q8_0/Q4_0/Q4_K_M, c = 1, 4, 8, 16
    python benchmarks/cpu_peers.py --shapes 0.6b --qtypes Q8_0 --concurrency 1,2 --output-tokens 4   # a custom plan
    python benchmarks/cpu_peers.py --contenders ours,llama-server --no-multi-turn
    python benchmarks/cpu_peers.py --qtypes Q8_0 --concurrency 1,16 --contenders ours,llama-server --repeats 3
    python benchmarks/cpu_peers.py --replot benchmarks/results/cpu_peers-20261201-1300.json   # table + PNG again

Every file is our safetensors checkpoint (random weights, real Qwen3 shape and tokenizer) converted once by the
project's own converter (what `serve --quantize` does), so "ours default path" (the checkpoint directory served with
default flags) runs on exactly the file llama-server gets. llama-server is built once from the llama.cpp sources in
llama-cpp-python's sdist into the user cache (~15 min on 2 cores; see peers/llama_server.py); OpenVINO GenAI gets its
own cached venv and an export of the same checkpoint (peers/openvino_env.py), and is driven in-process
(peers/openvino_driver.py). Servers are driven like `qwen3-api bench` (streamed OpenAI completions, greedy, end tokens
ignored, fresh prompts for every row); the multi-turn workload is peers/multiturn.py. A contender that fails is
reported and the rest go on. Rows, ratios and a PNG go to --out-dir. Only ratios from one idle run mean anything;
`--repeats N` runs every file's contenders N times (alternating their order) and judges each ratio on the median of
the N passes' own ratios, which a ratio near 1.0 needs on a VM whose rows move 10-20 % from run to run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import math
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from peers import engine_time, openvino_env, report
from peers.llama_server import (
    build_llama_server,
    built_without_amx,
    default_cache_dir,
    help_text,
    llama_server_command,
    llama_server_path,
    ours_repack_mode,
    repack_flags,
    server_env,
)
from peers.multiturn import ChatWorkload, run_chat
from peers.plan import CONTENDERS, MANY_CHATS_PER_SEQUENCE, Group, estimate_seconds, make_plan
from peers.report import LLAMA_SERVER, MANY_CHATS, MULTI_TURN, OURS, OURS_DEFAULT, SWEEP, Row, Run

from qwen3_api.bench.apis import ApiKind
from qwen3_api.bench.loadgen import WARMUP_SEED, LoadConfig, NoAcceptedStyle, request_seed, run_load
from qwen3_api.bench.metrics import BenchResult
from qwen3_api.bench.plot import machine_description
from qwen3_api.bench.prompts import PromptBuilder
from qwen3_api.bench.server_process import ServerProcess, ServerStartError, free_port

__all__ = ["build_llama_server", "default_cache_dir", "llama_server_path", "main"]
T = TypeVar("T")


def in_subprocess(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a fresh process, so the memory of building a model goes back to the OS."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def served_model(url: str) -> str:
    response = httpx.get(f"{url}/v1/models", timeout=30, trust_env=False)
    response.raise_for_status()
    return str(response.json()["data"][0]["id"])


@dataclass
class Peers:
    """What the run found or built before the first row: llama-server and its flags, OpenVINO's venv."""

    binary: Path | None = None
    llama_server_flags: tuple[str, ...] = ()
    llama_server_error: str = ""
    openvino_python: Path | None = None
    openvino_error: str = ""


def prepare_llama_server(args: argparse.Namespace, peers: Peers, run: Run) -> None:
    from qwen3_api.executors.llamacpp_options import build_has_amx, resolve_weight_repack

    binary = llama_server_path(args.cache_dir or default_cache_dir())
    try:
        if not binary.is_file():
            if args.no_build:
                raise RuntimeError(f"llama-server is not built at {binary} (run without --no-build)")
            binary = build_llama_server(binary.parents[3], args.jobs)
        ours_mode = resolve_weight_repack(ours_repack_mode(args.ours_flag))
        without_amx = built_without_amx(binary)
        flags = repack_flags(ours_mode, help_text(binary), without_amx)
    except Exception as exc:  # noqa: BLE001 -- reported as the contender's rows; the others go on
        peers.llama_server_error = f"{type(exc).__name__}: {exc}"
        print(f"llama-server unavailable: {peers.llama_server_error}", flush=True)
        return
    peers.binary, peers.llama_server_flags = binary, (*flags, *args.theirs_flag)
    note = (f"weight repacking: ours {ours_mode} (llama.cpp build AMX: {build_has_amx()}); "
            f"llama-server{' built without AMX' if without_amx else ''} gets "
            f"{' '.join(flags) or 'its default (repack on)'}")  # fmt: skip
    print(note, flush=True)
    run.notes.append(note)


def prepare_openvino(peers: Peers, log_dir: Path) -> None:
    try:
        peers.openvino_python = openvino_env.ensure_venv(log=log_dir / "openvino-install.log")
    except Exception as exc:  # noqa: BLE001
        peers.openvino_error = f"{type(exc).__name__}: {exc} (log {log_dir / 'openvino-install.log'})"
        print(f"OpenVINO unavailable: {peers.openvino_error}", flush=True)


def server_for(contender: str, group: Group, gguf: Path, model_dir: Path, args: argparse.Namespace, peers: Peers,
               log_dir: Path, seqs: int | None = None, tag: str = "") -> ServerProcess:  # fmt: skip
    """The contender's server on a free port; every one gets the same sequences (default: the group's highest
    concurrency) and context per sequence."""
    port, seqs, ctx = free_port(), seqs or max(group.concurrency), args.max_model_len
    log = log_dir / f"{contender}-{group.shape}-{group.qtype}{tag}.log"
    if contender == "llama-server":
        if peers.binary is None:
            raise RuntimeError(peers.llama_server_error or "llama-server is not built")
        command = llama_server_command(peers.binary, gguf, port, seqs, ctx, args.threads, peers.llama_server_flags)
        return ServerProcess(LLAMA_SERVER, command, port, ["/health"], log, server_env(peers.binary))
    serve = [sys.executable, "-m", "qwen3_api.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--max-num-seqs", str(seqs), "--max-model-len", str(ctx)]  # fmt: skip
    if contender == "ours-default":  # the checkpoint directory, default flags: --quantize auto makes the same Q8_0
        return ServerProcess(OURS_DEFAULT, [*serve, "--model", str(model_dir)], port, ["/health"], log)
    command = [*serve, "--model", str(gguf), "--backend", "llamacpp", "--llamacpp-threads", str(args.threads),
               *args.ours_flag]  # fmt: skip
    return ServerProcess(OURS, command, port, ["/health"], log)


def with_engine_time(contender: str, url: str, load: Callable[..., Coroutine[Any, Any, BenchResult]],
                     ) -> tuple[BenchResult, engine_time.EngineTime | None]:  # fmt: skip
    """Run one row, `load(after_warmup=...)` (`run_load` or `run_chat` with its other arguments bound); for ours
    also the engine's step counters over the row's timed requests."""
    if contender == "llama-server":
        return asyncio.run(load()), None
    before: dict[str, float] = {}
    result = asyncio.run(load(after_warmup=lambda: before.update(engine_time.scrape(url))))
    return result, engine_time.EngineTime.between(before, engine_time.scrape(url), result.duration_s)


def server_rows(contender: str, group: Group, gguf: Path, model_dir: Path, builder: PromptBuilder,
                args: argparse.Namespace, peers: Peers, log_dir: Path) -> list[Row]:  # fmt: skip
    label = CONTENDERS[contender]
    server = server_for(contender, group, gguf, model_dir, args, peers, log_dir)
    rows: list[Row] = []
    try:
        server.start()
        print(f"  {label}: ready after {server.wait_ready(args.start_timeout):.0f} s (log {server.log_path})")
        model = served_model(server.url)
        for c in group.concurrency:
            config = LoadConfig(url=server.url, api=ApiKind.OPENAI_COMPLETIONS, model=model,
                                num_requests=max(group.num_requests, c), concurrency=c,
                                prompt_tokens=args.prompt_tokens, output_tokens=group.output_tokens,
                                seed=args.seed + 1000 * c, timeout_s=args.request_timeout)  # fmt: skip
            try:
                result, engine = with_engine_time(contender, server.url, functools.partial(run_load, config, builder))
            except (NoAcceptedStyle, httpx.HTTPError) as exc:
                rows.append(Row(group.name, label, c, SWEEP, status=f"failed: {exc}"))
                print(f"  {label} c={c}: failed: {exc}\n{server.log_tail()}", flush=True)
                continue
            rows.append(Row(group.name, label, c, SWEEP, result, engine=engine.to_dict() if engine else None))
            print(f"  {label} c={c}: {result.output_throughput:.2f} output tok/s, TPOT p50 {result.tpot_ms.p50:.1f} "
                  f"ms, {result.failed} failed", flush=True)  # fmt: skip
            if engine is not None:
                print(f"    {engine.describe()}", flush=True)
        if group.multi_turn and contender in ("llama-server", "ours"):
            rows.append(chat_row(contender, group, server.url, model, builder, chat_workload(args), MULTI_TURN, args))
    except ServerStartError as exc:
        print(f"  {label}: failed to start: {exc}\n{server.log_tail()}", flush=True)
        done = {r.concurrency for r in rows}
        rows += [Row(group.name, label, c, SWEEP, status=f"failed to start: {exc}")
                 for c in group.concurrency if c not in done]  # fmt: skip
    finally:
        server.stop()
    return rows


def chat_row(contender: str, group: Group, url: str, model: str, builder: PromptBuilder, workload: ChatWorkload,
             name: str, args: argparse.Namespace) -> Row:  # fmt: skip
    """A chat workload (`name`: multi-turn or many-chats) against a running server, as one row."""
    label = CONTENDERS[contender]
    try:
        result, engine = with_engine_time(contender, url, functools.partial(
            run_chat, url, model, builder, workload, args.request_timeout))  # fmt: skip
    except (NoAcceptedStyle, httpx.HTTPError) as exc:
        return Row(group.name, label, workload.conversations, name, status=f"failed: {exc}")
    print(f"  {label} {name}: {result.output_throughput:.2f} output tok/s, TTFT p50 {result.ttft_ms.p50:.0f} ms, "
          f"{result.failed} failed", flush=True)  # fmt: skip
    if engine is not None:
        print(f"    {engine.describe()}", flush=True)
    return Row(group.name, label, workload.conversations, name, result, engine=engine.to_dict() if engine else None)


def many_chat_rows(contender: str, group: Group, gguf: Path, model_dir: Path, builder: PromptBuilder,
                   args: argparse.Namespace, peers: Peers, log_dir: Path) -> list[Row]:  # fmt: skip
    """The chat workload with MANY_CHATS_PER_SEQUENCE times more conversations than the server has sequences
    (`group.many_chats`): a conversation's next turn finds its history only where the server kept it beyond its
    sequences (our host-memory cache, llama-server's `--cache-ram`)."""
    label, seqs = CONTENDERS[contender], group.many_chats
    workload = dataclasses.replace(chat_workload(args), conversations=MANY_CHATS_PER_SEQUENCE * seqs)
    server = server_for(contender, group, gguf, model_dir, args, peers, log_dir, seqs=seqs, tag="-many-chats")
    try:
        server.start()
        print(f"  {label} on {seqs} sequences: ready after {server.wait_ready(args.start_timeout):.0f} s",
              flush=True)  # fmt: skip
        return [chat_row(contender, group, server.url, served_model(server.url), builder, workload, MANY_CHATS, args)]
    except ServerStartError as exc:
        print(f"  {label}: failed to start: {exc}\n{server.log_tail()}", flush=True)
        return [Row(group.name, label, workload.conversations, MANY_CHATS, status=f"failed to start: {exc}")]
    finally:
        server.stop()


def openvino_rows(contender: str, group: Group, model_dir: Path, builder: PromptBuilder, args: argparse.Namespace,
                  peers: Peers, log_dir: Path) -> list[Row]:  # fmt: skip
    """OpenVINO on the same prompts (token ids), output lengths and concurrency as the servers' rows."""
    from transformers import AutoTokenizer

    label, weight_format = CONTENDERS[contender], contender.split("-", 1)[1]
    if peers.openvino_python is None:
        raise RuntimeError(peers.openvino_error or "no OpenVINO venv")
    log = log_dir / f"{contender}-{group.shape}.log"
    export = openvino_env.ensure_export(peers.openvino_python, model_dir, weight_format, log)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))

    def ids(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    runs = []
    for c in group.concurrency:
        seed = args.seed + 1000 * c  # the seeds LoadConfig gives the servers' rows: the very same prompts
        runs.append({"concurrency": c, "output_tokens": group.output_tokens,
                     "warmup": ids(builder.prompt(args.prompt_tokens, WARMUP_SEED + seed)),
                     "prompts": [ids(builder.prompt(args.prompt_tokens, request_seed(seed, i)))
                                 for i in range(max(group.num_requests, c))]})  # fmt: skip
    spec = openvino_env.driver_spec(export, args.threads, runs, max(group.concurrency))
    payload = openvino_env.run_driver(peers.openvino_python, spec, log, args.request_timeout)
    results = openvino_env.results_from_driver(payload, label, group.output_tokens, args.prompt_tokens)
    for c, result in results.items():
        print(f"  {label} c={c}: {result.output_throughput:.2f} output tok/s", flush=True)
    return [Row(group.name, label, c, SWEEP, results[c]) for c in group.concurrency]


def chat_workload(args: argparse.Namespace) -> ChatWorkload:
    return ChatWorkload(args.chat_conversations, args.chat_turns, args.chat_first_tokens, args.chat_turn_tokens,
                        args.chat_output_tokens)  # fmt: skip


def run_group(group: Group, args: argparse.Namespace, peers: Peers, log_dir: Path, run: Run, out: Path) -> None:
    from qwen3_api.demo_models.checkpoints import cached_test_model
    from qwen3_api.models.gguf_convert import convert_checkpoint

    def failed(contender: str, why: str) -> list[Row]:
        return [Row(group.name, CONTENDERS[contender], c, SWEEP, status=f"failed: {why}") for c in group.concurrency]

    dtype = "bfloat16" if group.shape == "4b" else "float32"  # a float32 4b checkpoint would need ~17 GB
    try:
        model_dir = in_subprocess(cached_test_model, group.shape, 0, dtype)
        gguf = in_subprocess(convert_checkpoint, model_dir, group.qtype.lower())
        if args.prepare and peers.openvino_python is not None:
            for contender in (c for c in group.contenders if c.startswith("openvino")):
                openvino_env.ensure_export(peers.openvino_python, model_dir, contender.split("-", 1)[1],
                                           log_dir / f"{contender}-{group.shape}.log")  # fmt: skip
    except Exception as exc:  # noqa: BLE001 -- no file for this group: its rows say why, the next group goes on
        print(f"{group.name}: preparing the model or its file failed: {exc!r}", flush=True)
        run.rows += [row for contender in group.contenders for row in failed(contender, f"no file: {exc}")]
        return
    print(f"{group.name}: {gguf}", flush=True)
    if args.prepare:
        return
    builder = PromptBuilder.from_tokenizer_dir(model_dir)
    for repeat in range(args.repeats):
        # Every pass runs each contender once on the same prompts, in reverse order on odd passes, so a drift of
        # the machine over the run weighs on both sides alike.
        order = group.contenders if repeat % 2 == 0 else tuple(reversed(group.contenders))
        if args.repeats > 1:
            print(f"  pass {repeat + 1} of {args.repeats}: {', '.join(order)}", flush=True)
        for contender in order:
            try:
                if contender.startswith("openvino"):
                    rows = openvino_rows(contender, group, model_dir, builder, args, peers, log_dir)
                else:
                    rows = server_rows(contender, group, gguf, model_dir, builder, args, peers, log_dir)
                    if group.many_chats and contender in ("llama-server", "ours"):
                        rows += many_chat_rows(contender, group, gguf, model_dir, builder, args, peers, log_dir)
            except Exception as exc:  # noqa: BLE001 -- a contender that fails: say so, go on
                print(f"  {CONTENDERS[contender]} failed: {exc!r} (logs in {log_dir})", flush=True)
                rows = failed(contender, f"{type(exc).__name__}: {exc}")
            for row in rows:
                row.repeat = repeat
            run.rows += rows
            run.save(out)  # after every contender: an interrupted run keeps what it measured


def print_run(run: Run) -> None:
    print(f"\n{run.machine}; run started {run.started}")
    for note in run.notes:
        print(f"note: {note}")
    print("\n" + report.table(run.rows) + "\n\ntimes in ms; ratios (ours / theirs):")
    for ratio in report.ratios(run.rows):
        print(ratio.line())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    def words(text: str) -> list[str]:
        return [w for w in text.split(",") if w]

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=("quick", "full"), default="quick")
    p.add_argument("--shapes", type=words, default=None, help="custom plan: e.g. 0.6b,4b")
    p.add_argument("--qtypes", type=words, default=None, help="custom plan: Q8_0, Q4_0, Q4_K_M")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in words(s)], default=None)
    p.add_argument("--num-requests", type=int, default=None, help="requests per row (at least c)")
    p.add_argument("--output-tokens", type=int, default=None)
    p.add_argument("--contenders", type=words, default=None, help=f"subset of {','.join(CONTENDERS)}")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=1,
                   help="passes over each file (fresh servers each); a ratio is the median of the passes'")
    p.add_argument("--no-multi-turn", action="store_true")
    p.add_argument("--many-chats-sequences", type=int, default=None,
                   help=f"servers of this many sequences for the many-chats workload ({MANY_CHATS_PER_SEQUENCE}x as "
                   "many conversations); 0: none; default: the preset's (quick: 4 on 0.6b Q4_0)")
    p.add_argument("--chat-conversations", type=int, default=4)
    p.add_argument("--chat-turns", type=int, default=4)
    p.add_argument("--chat-first-tokens", type=int, default=256)
    p.add_argument("--chat-turn-tokens", type=int, default=32)
    p.add_argument("--chat-output-tokens", type=int, default=32)
    p.add_argument("--max-model-len", type=int, default=1024, help="context per sequence, every server")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start-timeout", type=float, default=1800, help="seconds (ours-default may convert first)")
    p.add_argument("--request-timeout", type=float, default=3600)
    p.add_argument("--cache-dir", type=Path, default=None, help="where llama-server is built and kept")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="llama-server build parallelism")
    p.add_argument("--no-build", action="store_true", help="report llama-server as failed when it is not built")
    p.add_argument("--ours-flag", action="append", default=[], help="extra serve flag for ours (repeatable)")
    p.add_argument("--theirs-flag", action="append", default=[], help="extra llama-server flag (repeatable)")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--replot", type=Path, default=None, help="print and plot a saved run's JSON; measure nothing")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its estimated duration only")
    p.add_argument("--prepare", action="store_true",
                   help="build, install, make and export everything the plan needs, measure nothing")  # fmt: skip
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    unknown = [c for c in args.contenders or [] if c not in CONTENDERS]
    if unknown:
        p.error(f"unknown contenders {unknown}; choose from {', '.join(CONTENDERS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot is not None:
        run = Run.load(args.replot)
        print_run(run)
        print(f"\nplot: {report.plot(run, args.replot.with_suffix('.png'))}")
        return 0
    plan, chat = make_plan(args), chat_workload(args)
    estimate = estimate_seconds(plan, args.prompt_tokens, chat) * args.repeats
    for g in plan:
        print(f"plan: {g.name} c={','.join(map(str, g.concurrency))} {g.num_requests} requests x {g.output_tokens} "
              f"tokens: {', '.join(g.contenders)}{' + multi-turn' if g.multi_turn else ''}"
              f"{f' + many-chats on {g.many_chats} sequences' if g.many_chats else ''}")  # fmt: skip
    print(f"estimated duration on 2 idle cores: ~{math.ceil(estimate / 60)} min (+ builds, model and file "
          "preparation on a first run)", flush=True)  # fmt: skip
    if args.dry_run:
        return 0
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    run = Run(machine_description(), started, {"prompt_tokens": args.prompt_tokens, "preset": args.preset,
              "repeats": args.repeats,
              "plan": [vars(g) for g in plan], "chat": vars(chat), "threads": args.threads,
              "estimate_s": estimate})  # fmt: skip
    out = args.out_dir / f"cpu_peers-{time.strftime('%Y%m%d-%H%M', time.gmtime())}.json"
    log_dir = Path(tempfile.mkdtemp(prefix="bench-cpu-peers-"))
    print(f"logs in {log_dir}; results in {out}", flush=True)
    peers = Peers()
    wanted = {c for g in plan for c in g.contenders}
    if "llama-server" in wanted:
        prepare_llama_server(args, peers, run)
    if wanted & {"openvino-int8", "openvino-int4"}:
        prepare_openvino(peers, log_dir)
    began = time.monotonic()
    for group in plan:
        run_group(group, args, peers, log_dir, run, out)
    if args.prepare:
        print(f"prepared in {(time.monotonic() - began) / 60:.1f} min", flush=True)
        return 0
    run.notes.append(f"took {(time.monotonic() - began) / 60:.1f} min (estimated {estimate / 60:.0f})")
    run.save(out)
    print_run(run)
    try:
        print(f"\nplot: {report.plot(run, out.with_suffix('.png'))}\nresults: {out}\nlogs: {log_dir}")
    except ValueError as exc:
        print(f"\nno plot: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
