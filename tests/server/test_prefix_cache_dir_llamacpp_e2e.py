"""--prefix-cache-dir on the llama.cpp backend (its default shared KV pool), as a user sees it: a graceful restart
keeps the retained sequences; a mismatched or corrupt snapshot is ignored with one log line; the directory stays
within --prefix-cache-dir-mb."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ServerProcess, start_server, stop_server
from tests.server.prefix_cache_requests import cached, completion

pytest.importorskip("llama_cpp")

MODEL = "test:tiny:gguf=F32"
BUDGET_MB = 0.5


def serve(directory: Path, log: Path, *args: str, model: str = MODEL) -> ServerProcess:
    # no response cache: every answer here is computed by the engine
    return start_server(model, log, "--backend", "llamacpp", "--response-cache-mb", "0", "--prefix-cache-dir",
                        str(directory), "--prefix-cache-dir-mb", str(BUDGET_MB), *args)  # fmt: skip


def directory_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir())


def ignoring_lines(server: ServerProcess) -> list[str]:
    return [line for line in server.log().splitlines() if "prefix cache: ignoring" in line]


def test_restart_keeps_sequences_and_bad_snapshots_are_ignored(tmp_path: Path) -> None:
    directory = tmp_path / "prefixes"
    first = serve(directory, tmp_path / "first.log")
    try:
        assert cached(completion(first, "Question one?")) == 0
        warm = completion(first, "Question one?")  # all but the last prompt token from the retained sequence
        assert cached(warm) == warm["usage"]["prompt_tokens"] - 1
    finally:
        stop_server(first)  # SIGTERM: graceful shutdown writes the snapshot
    assert "prefix cache: saved 1 sequences" in first.log()
    assert directory_bytes(directory) <= BUDGET_MB * 2**20

    second = serve(directory, tmp_path / "second.log")
    try:
        assert "prefix cache: loaded 1 of 1 sequences" in second.log()
        restored = completion(second, "Question one?")  # the first request after the restart
        assert cached(restored) == cached(warm)
        # the same prefix hit as before the restart, on cells read back from disk: bit-identical logprobs
        assert restored["choices"] == warm["choices"]
        other = completion(second, "A different question?")
        prompt_tokens = other["usage"]["prompt_tokens"]
        assert prompt_tokens - 10 < cached(other) < prompt_tokens  # the shared prefix
    finally:
        stop_server(second)
    assert directory_bytes(directory) <= BUDGET_MB * 2**20

    mismatched = serve(directory, tmp_path / "mismatched.log", model="test:tiny:gguf=Q8_0")  # another GGUF file
    try:
        lines = ignoring_lines(mismatched)
        assert len(lines) == 1 and "model_identity is" in lines[0], lines
        assert cached(completion(mismatched, "Question one?")) == 0
    finally:
        mismatched.process.kill()  # no graceful shutdown: the snapshot on disk stays the f16 one
        mismatched.process.wait()

    data = next(directory.glob("snapshot-*.safetensors"))
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    third = serve(directory, tmp_path / "third.log")
    try:
        lines = ignoring_lines(third)
        assert len(lines) == 1 and "corrupt" in lines[0], lines
        assert cached(completion(third, "Question one?")) == 0
    finally:
        stop_server(third)
