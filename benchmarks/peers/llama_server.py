"""llama.cpp's own C++ `llama-server`, built from the llama.cpp sources vendored in llama-cpp-python's sdist (the
very version our backend runs), and the command line that makes it a fair peer of ours on the same GGUF file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from qwen3_api.models.llama_vocab import cpu_has_amx

LLAMA_SERVER_CMAKE_FLAGS = (
    "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DGGML_NATIVE=ON",
)  # fmt: skip
# On CPUs that report AMX, llama.cpp's AMX kernels may still not run (measured: a Firecracker guest of a Xeon with
# amx_int8 dies at the first tile instruction). -march=native would compile them in and put the AMX buffer type first,
# and llama-server cannot name CPU_REPACK alone, so it would lose the repacked AVX2 layouts ours runs there. Built
# without AMX, its default extra-buffer list is CPU_REPACK alone: the same kernels as ours.
NO_AMX_CFLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
NO_AMX_MARKER = "built-without-amx"
NO_REPACK_FLAG = "--no-repack"


def llama_cpp_python_version() -> str:
    """The installed llama-cpp-python, whose vendored llama.cpp llama-server is built from."""
    return metadata.version("llama-cpp-python")


def default_cache_dir() -> Path:
    suffix = "-no-amx" if cpu_has_amx() else ""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qwen3-api" / (
        f"llama-server-{llama_cpp_python_version()}{suffix}"
    )


def cmake_flags(without_amx: bool) -> list[str]:
    """The configure flags: native code for this CPU, less AMX when `without_amx`."""
    flags = list(LLAMA_SERVER_CMAKE_FLAGS)
    if without_amx:
        flags += [f"-DCMAKE_C_FLAGS={NO_AMX_CFLAGS}", f"-DCMAKE_CXX_FLAGS={NO_AMX_CFLAGS}"]
    return flags


def built_without_amx(binary: Path) -> bool:
    """Whether `build_llama_server` left its no-AMX marker beside the build."""
    return (binary.parents[2] / NO_AMX_MARKER).is_file()


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
    without_amx = cpu_has_amx()
    print(f"building llama-server in {source}{' without AMX' if without_amx else ''} (~15 min on 2 cores)", flush=True)
    subprocess.run(["cmake", "-S", str(source), "-B", str(source / "build"), *cmake_flags(without_amx)], check=True)
    subprocess.run(["cmake", "--build", str(source / "build"), "--target", "llama-server", "-j", str(jobs)], check=True)
    if not binary.is_file():
        raise RuntimeError(f"the build finished without {binary}")
    if without_amx:
        (source / NO_AMX_MARKER).touch()
    return binary


def server_env(binary: Path) -> dict[str, str]:
    """llama-server's shared libraries (libllama, libggml*) are built beside it."""
    return {"LD_LIBRARY_PATH": str(binary.parent)}


def help_text(binary: Path) -> str:
    """`llama-server --help`, to check which flags this build knows."""
    done = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **server_env(binary)})  # fmt: skip
    return done.stdout + done.stderr


def repack_flags(ours_mode: str, help_output: str, without_amx: bool = False) -> list[str]:
    """The llama-server flags closest to our backend's weight layouts (`ours_mode`: resolved "on", "cpu", "off").

    "on": both take llama.cpp's whole extra-buffer list. "cpu" (ours on a build with AMX: its list turned off and
    its matrices named for CPU_REPACK alone): a llama-server built `without_amx` has CPU_REPACK alone in its list, so
    it takes its default; one built with AMX gets `--no-repack` (its `--override-tensor` offers only the devices'
    own buffer types, and the AMX kernels die on virtual machines that report AMX), so it runs the plain layout.
    "off": `--no-repack`.
    """
    if ours_mode == "on" or (ours_mode == "cpu" and without_amx):
        return []
    if NO_REPACK_FLAG not in help_output:
        raise RuntimeError(f"this llama-server has no {NO_REPACK_FLAG}: it cannot run the kernels ours runs")
    return [NO_REPACK_FLAG]


def ours_repack_mode(ours_flags: Sequence[str]) -> str:
    """The `--llamacpp-weight-repack` value among our extra serve flags (`auto` when not given)."""
    mode = "auto"
    for i, flag in enumerate(ours_flags):
        if flag.startswith("--llamacpp-weight-repack="):
            mode = flag.split("=", 1)[1]
        elif flag == "--llamacpp-weight-repack" and i + 1 < len(ours_flags):
            mode = ours_flags[i + 1]
    return mode


def llama_server_command(binary: Path, gguf: Path, port: int, seqs: int, ctx_per_seq: int, threads: int,
                         extra: Sequence[str] = ()) -> list[str]:  # fmt: skip
    """llama-server on `gguf` with `seqs` parallel slots of `ctx_per_seq` tokens each (`-c` is the total)."""
    return [
        str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-np", str(seqs),
        "-c", str(seqs * ctx_per_seq), "-t", str(threads), "-tb", str(threads), "--no-webui", *extra,
    ]  # fmt: skip
