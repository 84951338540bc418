"""Side by side on one GGUF file: llama.cpp's own C++ `llama-server` against our llama.cpp backend, driven alike by
`qwen3-api bench` (OpenAI completions, streamed, end tokens ignored, fresh prompts per row).

    python benchmarks/cpu_peers.py                          # 0.6b shape, Q8_0 and Q4_0, c = 1, 4, 8, 16
    python benchmarks/cpu_peers.py --shapes 0.6b,4b --qtypes Q4_0 --concurrency 8
    python benchmarks/cpu_peers.py --no-build               # fail instead of building llama-server
    python benchmarks/cpu_peers.py --ours-flag=--no-llamacpp-kv-unified   # a knob of ours, same run

llama-server is built once from the llama.cpp sources vendored in llama-cpp-python's sdist (the very version our
backend runs; see ../shared notes "peers-on-this-machine"): `pip download` of the sdist, then CMake + Ninja of
the `llama-server` target into `--cache-dir` (default ~/.cache/qwen3-api/llama-server-<version>), reused by later
runs. The build takes ~15 minutes of 2 cores: run it on an idle machine. Both servers get the same threads,
sequences (`-np`) and total context. It prints each row and every ours/theirs ratio (target >= 1.0 at every
concurrency). Timings on a shared machine mean little: only ratios measured in one run do.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from qwen3_api.bench.server_process import ServerProcess, free_port

LLAMA_SERVER_CMAKE_FLAGS = (
    "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DGGML_NATIVE=ON",
)  # fmt: skip
CONTENDERS = ("llama-server", "ours")


def llama_cpp_python_version() -> str:
    """The installed llama-cpp-python, whose vendored llama.cpp llama-server is built from."""
    return metadata.version("llama-cpp-python")


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qwen3-api" / (
        f"llama-server-{llama_cpp_python_version()}"
    )


def llama_server_path(cache_dir: Path) -> Path:
    """Where the build puts the binary (its shared libraries sit beside it: run with LD_LIBRARY_PATH there)."""
    return cache_dir / "llama.cpp" / "build" / "bin" / "llama-server"


def build_llama_server(cache_dir: Path, jobs: int) -> Path:
    """llama-server from llama-cpp-python's sdist, built into `cache_dir` unless it is already there."""
    binary = llama_server_path(cache_dir)
    if binary.is_file():
        return binary
    for tool in ("cmake", "ninja"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"building llama-server needs {tool} on PATH")
    cache_dir.mkdir(parents=True, exist_ok=True)
    source = cache_dir / "llama.cpp"
    if not (source / "CMakeLists.txt").is_file():
        with tempfile.TemporaryDirectory(dir=cache_dir) as staging:
            version = llama_cpp_python_version()
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                 f"llama-cpp-python=={version}", "-d", staging],
                check=True,
            )  # fmt: skip
            (archive,) = Path(staging).glob("llama_cpp_python-*.tar.gz")
            with tarfile.open(archive) as tar:
                tar.extractall(staging, filter="data")
            (vendored,) = Path(staging).glob("llama_cpp_python-*/vendor/llama.cpp")
            vendored.rename(source)  # atomic within one file system: a half-unpacked tree is never `source`
    print(f"building llama-server in {source} (~15 min on 2 cores)", flush=True)
    subprocess.run(["cmake", "-S", str(source), "-B", str(source / "build"), *LLAMA_SERVER_CMAKE_FLAGS], check=True)
    subprocess.run(["cmake", "--build", str(source / "build"), "--target", "llama-server", "-j", str(jobs)], check=True)
    if not binary.is_file():
        raise RuntimeError(f"the build finished without {binary}")
    return binary


def server_command(name: str, gguf: Path, port: int, args: argparse.Namespace, binary: Path | None) -> list[str]:
    """Both servers: same file, threads, sequences and context per sequence."""
    seqs, ctx = max(args.concurrency), args.max_model_len
    if name == "llama-server":
        if binary is None:
            raise RuntimeError("llama-server is not built")
        return [
            str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-np", str(seqs),
            "-c", str(seqs * ctx), "-t", str(args.threads), "-tb", str(args.threads), "--no-webui",
            *args.theirs_flag,
        ]  # fmt: skip
    return [
        sys.executable, "-m", "qwen3_api.cli", "serve", "--model", str(gguf), "--backend", "llamacpp",
        "--host", "127.0.0.1", "--port", str(port), "--max-num-seqs", str(seqs), "--max-model-len", str(ctx),
        "--llamacpp-threads", str(args.threads), *args.ours_flag,
    ]  # fmt: skip


def bench(url: str, model: str, tokenizer: Path, concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    """One `qwen3-api bench` run; its JSON result."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        result_path = Path(out.name)
    try:
        subprocess.run(
            [sys.executable, "-m", "qwen3_api.cli", "bench", "--url", url, "--api", "openai-completions",
             "--model", model, "--num-requests", str(max(args.num_requests, concurrency)),
             "--concurrency", str(concurrency), "--prompt-tokens", str(args.prompt_tokens),
             "--output-tokens", str(args.output_tokens), "--tokenizer", str(tokenizer),
             "--seed", str(args.seed + 1000 * concurrency), "--json-out", str(result_path)],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        return json.loads(result_path.read_text())  # type: ignore[no-any-return]
    finally:
        result_path.unlink(missing_ok=True)


def output_throughput(result: dict[str, Any]) -> float:
    return float(result["output_throughput"])


def served_model(url: str) -> str:
    import httpx

    response = httpx.get(f"{url}/v1/models", timeout=30, trust_env=False)
    response.raise_for_status()
    return str(response.json()["data"][0]["id"])


def run_contender(name: str, gguf: Path, tokenizer: Path, args: argparse.Namespace, binary: Path | None,
                  log_dir: Path) -> dict[int, float]:  # fmt: skip
    port = free_port()
    env = {"LD_LIBRARY_PATH": str(binary.parent)} if name == "llama-server" and binary is not None else None
    server = ServerProcess(name, server_command(name, gguf, port, args, binary), port, ("/health",),
                           log_dir / f"{name}-{gguf.stem}.log", env=env)  # fmt: skip
    rates: dict[int, float] = {}
    with server:
        server.wait_ready(args.start_timeout)
        model = served_model(server.url)
        for c in args.concurrency:
            rates[c] = output_throughput(bench(server.url, model, tokenizer, c, args))
            print(f"  {name} c={c}: {rates[c]:.2f} output tok/s", flush=True)
    return rates


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="0.6b", type=lambda s: s.split(","))
    parser.add_argument("--qtypes", default="Q8_0,Q4_0", type=lambda s: s.split(","))
    parser.add_argument("--concurrency", default="1,4,8,16", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--num-requests", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--max-model-len", type=int, default=1024, help="context per sequence, both servers")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start-timeout", type=float, default=600)
    parser.add_argument("--cache-dir", type=Path, default=None, help="where llama-server is built and kept")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="build parallelism")
    parser.add_argument("--no-build", action="store_true", help="fail when llama-server is not built yet")
    parser.add_argument("--only", choices=CONTENDERS, help="run one contender (e.g. ours while nothing is built)")
    parser.add_argument("--ours-flag", action="append", default=[], help="extra serve flag for ours (repeatable)")
    parser.add_argument("--theirs-flag", action="append", default=[], help="extra llama-server flag (repeatable)")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    from qwen3_api.demo_models.checkpoints import cached_test_model
    from qwen3_api.demo_models.gguf import cached_test_gguf, parse_gguf_type

    contenders = [args.only] if args.only else list(CONTENDERS)
    binary = None
    if "llama-server" in contenders:
        cache_dir = args.cache_dir or default_cache_dir()
        binary = llama_server_path(cache_dir)
        if not binary.is_file():
            if args.no_build:
                raise SystemExit(f"llama-server is not built in {cache_dir} (run without --no-build)")
            binary = build_llama_server(cache_dir, args.jobs)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-cpu-peers-"))
    print(f"logs in {log_dir}", flush=True)
    for shape in args.shapes:
        dtype = "bfloat16" if shape == "4b" else "float32"
        tokenizer = cached_test_model(shape, dtype=dtype)
        for qtype in (parse_gguf_type(q) for q in args.qtypes):
            gguf = Path(cached_test_gguf(qtype, shape=shape, dtype=dtype))
            print(f"{shape} {qtype}: {gguf}", flush=True)
            rates: dict[str, dict[int, float]] = {}
            for name in contenders:
                try:
                    rates[name] = run_contender(name, gguf, tokenizer, args, binary, log_dir)
                except Exception as exc:  # a contender that fails: say so, go on
                    print(f"  {name} failed: {exc!r} (logs in {log_dir})", flush=True)
            if len(rates) == 2:
                for c in args.concurrency:
                    ratio = rates["ours"][c] / rates["llama-server"][c]
                    print(f"  c={c}: ours/llama-server output tok/s = {ratio:.2f} (target >= 1.0)", flush=True)


if __name__ == "__main__":
    main()
