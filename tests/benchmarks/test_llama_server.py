"""llama-server's command line: the same slots and context as ours, and no weight repacking where ours has none."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from peers.llama_server import (
    cmake_flags,
    default_cache_dir,
    help_text,
    llama_server_command,
    llama_server_path,
    ours_repack_mode,
    repack_flags,
)

HELP_WITH_REPACK = "-nr,    --repack, --no-repack   whether to enable weight repacking (default: enabled)\n"


def test_no_repack_unless_ours_takes_every_extra_layout() -> None:
    assert repack_flags(ours_mode="off", help_output=HELP_WITH_REPACK) == ["--no-repack"]
    # CPU_REPACK without AMX: llama-server cannot choose that buffer type, and its whole list would bring AMX
    assert repack_flags(ours_mode="cpu", help_output=HELP_WITH_REPACK) == ["--no-repack"]
    assert repack_flags(ours_mode="on", help_output=HELP_WITH_REPACK) == []


def test_a_build_without_amx_takes_its_default_list_where_ours_runs_cpu_repack_alone() -> None:
    # built without AMX, llama-server's extra-buffer list is CPU_REPACK alone: ours' "cpu" layouts
    assert repack_flags(ours_mode="cpu", help_output=HELP_WITH_REPACK, without_amx=True) == []
    assert repack_flags(ours_mode="off", help_output=HELP_WITH_REPACK, without_amx=True) == ["--no-repack"]


def test_the_no_amx_build_compiles_native_code_without_amx() -> None:
    # ggml adds -march=native after the configure flags' CMAKE_C_FLAGS: the explicit -mno-* must still win there
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    flags = cmake_flags(without_amx=True)
    assert "-DGGML_NATIVE=ON" in flags
    (c_flags,) = [f.split("=", 1)[1] for f in flags if f.startswith("-DCMAKE_C_FLAGS=")]
    assert f"-DCMAKE_CXX_FLAGS={c_flags}" in flags
    macros = subprocess.run(["gcc", *c_flags.split(), "-march=native", "-dM", "-E", "-"], input="",
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "__AMX_INT8__" not in macros and "__AMX_TILE__" not in macros and "__AMX_BF16__" not in macros
    assert "__SSE2__" in macros  # native code is still there
    assert not any("CMAKE_C_FLAGS" in flag for flag in cmake_flags(without_amx=False))


def test_a_build_without_the_switch_is_refused_rather_than_run_on_other_kernels() -> None:
    with pytest.raises(RuntimeError, match="--no-repack"):
        repack_flags(ours_mode="cpu", help_output="-t, --threads N\n")
    assert repack_flags(ours_mode="on", help_output="-t, --threads N\n") == []  # nothing to switch off


@pytest.mark.parametrize(
    ("flags", "mode"),
    [([], "auto"), (["--llamacpp-weight-repack", "on"], "on"), (["--llamacpp-weight-repack=off"], "off"),
     (["--no-llamacpp-kv-unified", "--llamacpp-weight-repack", "off"], "off")],
)  # fmt: skip
def test_ours_repack_mode_is_read_from_our_extra_flags(flags: list[str], mode: str) -> None:
    assert ours_repack_mode(flags) == mode


def test_command_gives_every_slot_the_context_ours_gets_per_sequence() -> None:
    command = llama_server_command(Path("/bin/llama-server"), Path("m.gguf"), 8123, 16, 1024, 2, ["--no-repack"])
    assert command[0] == "/bin/llama-server"
    pairs = dict(zip(command[1::2], command[2::2]))
    assert pairs["-m"] == "m.gguf" and pairs["--port"] == "8123" and pairs["-np"] == "16"
    assert pairs["-c"] == str(16 * 1024) and pairs["-t"] == "2" and pairs["-tb"] == "2"
    assert command[-1] == "--no-repack"


def test_the_built_binary_knows_no_repack() -> None:
    binary = llama_server_path(default_cache_dir())
    if not binary.is_file():
        pytest.skip(f"llama-server is not built at {binary} (benchmarks/cpu_peers.py builds it)")
    assert "--no-repack" in help_text(binary)
