"""--prefix-cache-dir as a user sees it: a restart keeps the prompt prefixes' KV; a corrupt snapshot is ignored."""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import ServerProcess, start_server, stop_server
from tests.server.prefix_cache_requests import cached, completion


def serve(model_dir: Path, directory: Path, log: Path) -> ServerProcess:
    # no response cache: every answer here is computed by the engine
    return start_server(str(model_dir), log, "--backend", "torch", "--response-cache-mb", "0",
                        "--prefix-cache-dir", str(directory), "--prefix-cache-save-interval", "1")  # fmt: skip


def test_restart_keeps_prefixes_and_a_corrupt_snapshot_is_ignored(tiny_model_dir: Path, tmp_path: Path) -> None:
    directory = tmp_path / "prefixes"
    first = serve(tiny_model_dir, directory, tmp_path / "first.log")
    try:
        assert cached(completion(first, "Question one?")) == 0
        deadline = time.monotonic() + 60
        while not (directory / "manifest.json").exists():  # written in the background, without a shutdown
            assert time.monotonic() < deadline, "no periodic snapshot"
            time.sleep(0.2)
        warm = completion(first, "Question one?")  # the prefix from memory
        assert cached(warm) > 0
    finally:
        stop_server(first)
    assert "prefix cache: saved" in first.log()

    second = serve(tiny_model_dir, directory, tmp_path / "second.log")
    try:
        assert "prefix cache: loaded" in second.log()
        other = completion(second, "A different question?")  # the first request after the restart
        prompt_tokens = other["usage"]["prompt_tokens"]
        assert prompt_tokens - 32 < cached(other) < prompt_tokens  # the shared prefix, to the last full block
        restored = completion(second, "Question one?")
        assert cached(restored) == cached(warm)
        assert restored["choices"] == warm["choices"]  # bit-identical logprobs from the K/V read back from disk
    finally:
        stop_server(second)

    data = next(directory.glob("snapshot-*.safetensors"))
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    third = serve(tiny_model_dir, directory, tmp_path / "third.log")
    try:
        lines = [line for line in third.log().splitlines() if "prefix cache: ignoring" in line]
        assert len(lines) == 1 and "corrupt" in lines[0]
        assert cached(completion(third, "Question one?")) == 0
    finally:
        stop_server(third)
