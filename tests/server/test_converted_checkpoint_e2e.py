"""A safetensors checkpoint served with the CPU defaults runs on llama.cpp from its q8_0 conversion: the same greedy
tokens as serving our own Q8_0 GGUF of the same weights; a second start reuses the converted file."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.conftest import ServerPool, ServerProcess, start_server, stop_server

pytest.importorskip("llama_cpp")

PROMPTS = [[9707, 11, 1879, 0], [151644, 872, 198, 3838, 374, 220, 17, 10, 17, 30, 151645, 198, 151644, 77091, 198]]


@pytest.fixture(scope="module")
def gguf_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gguf-cache")


def greedy(server: ServerProcess, prompt: list[int]) -> tuple[str, list[float]]:
    body = {"model": server.model, "prompt": prompt, "max_tokens": 16, "temperature": 0, "logprobs": 1,
            "ignore_eos": True}  # fmt: skip
    response = requests.post(f"{server.url}/v1/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    return choice["text"], choice["logprobs"]["tokens"]


def test_default_cpu_path_serves_the_q8_0_conversion(
    tiny_model_dir: Path, gguf_cache: Path, server_pool: ServerPool, tmp_path: Path
) -> None:
    converted = server_pool.get(str(tiny_model_dir), "--device", "cpu", "--gguf-cache-dir", str(gguf_cache))
    ours = server_pool.get("test:tiny:gguf=Q8_0", "--backend", "llamacpp")
    log = converted.log()
    assert "backend='llamacpp', quantize='q8_0'" in log and "converting" in log
    [cached] = gguf_cache.glob("*-Q8_0.gguf")
    for prompt in PROMPTS:
        assert greedy(converted, prompt) == greedy(ours, prompt), prompt
    # A second start finds the file: no conversion, same file untouched.
    mtime = cached.stat().st_mtime_ns
    again = start_server(str(tiny_model_dir), tmp_path / "again.log", "--max-model-len", "2048", "--gguf-cache-dir",
                         str(gguf_cache))  # fmt: skip
    try:
        assert "using the GGUF converted earlier" in again.log() and "converting" not in again.log()
        assert greedy(again, PROMPTS[0]) == greedy(ours, PROMPTS[0])
    finally:
        stop_server(again)
    assert cached.stat().st_mtime_ns == mtime and list(gguf_cache.iterdir()) == [cached]
