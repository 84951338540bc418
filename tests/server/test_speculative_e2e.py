"""`qwen3-api serve --speculative ngram` on the real SmolLM2-135M-Instruct GGUF: both APIs answer exactly what the
server without it answers (greedy), stop strings and max_tokens end the output at the same token, structured
output does not speculate, and /metrics counts the drafts proposed and accepted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import ServerPool, ServerProcess
from tests.real_model import smollm2_gguf

pytest.importorskip("llama_cpp")

CODE = (
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonnaci(n - 2)\n\n"
    "for i in range(10):\n    print(i, fibonacci(i))\n"
)
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Fix the typo in this code and return the whole code:\n\n" + CODE},
]
CHATML = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nRepeat the following text "
    "exactly: The quick brown fox jumps over the lazy dog, and the dog sleeps on under the warm afternoon sun."
    "<|im_end|>\n<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def servers(server_pool: ServerPool) -> tuple[ServerProcess, ServerProcess]:
    """(plain, speculative) servers of one model on per-sequence KV (bit-exact logits, see the engine tests)."""
    model = str(smollm2_gguf())
    plain = server_pool.get(model, "--no-llamacpp-kv-unified")
    return plain, server_pool.get(model, "--no-llamacpp-kv-unified", "--speculative", "ngram")


def spec_counters(server: ServerProcess) -> dict[str, float]:
    counters = {}
    for line in requests.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("qwen3_api_engine_spec_decode_"):
            name, value = line.rsplit(" ", 1)
            counters[name.removeprefix("qwen3_api_engine_spec_decode_")] = float(value)
    return counters


def chat(server: ServerProcess, **extra: Any) -> dict[str, Any]:
    # A generous timeout: on a busy 2-core machine the plain server took over 300 s for these ~45 tokens.
    body = {"model": server.model, "messages": MESSAGES, "temperature": 0, "max_tokens": 150, **extra}
    response = requests.post(f"{server.url}/v1/chat/completions", json=body, timeout=900)
    assert response.status_code == 200, response.text
    return response.json()


def test_chat_is_unchanged_and_drafts_are_accepted(servers: tuple[ServerProcess, ServerProcess]) -> None:
    plain, spec = servers
    before = spec_counters(spec)
    ours, theirs = chat(spec), chat(plain)
    assert ours["choices"][0]["message"] == theirs["choices"][0]["message"]
    assert ours["usage"] == theirs["usage"]
    assert "fibonacci(n - 2)" in ours["choices"][0]["message"]["content"]
    after = spec_counters(spec)
    drafted = after["draft_tokens_total"] - before["draft_tokens_total"]
    accepted = after["accepted_tokens_total"] - before["accepted_tokens_total"]
    assert drafted > 0 and accepted > 0.5 * drafted
    assert "draft_tokens_total" not in spec_counters(plain)


def test_generate_streamed_is_unchanged(servers: tuple[ServerProcess, ServerProcess]) -> None:
    def stream(server: ServerProcess) -> tuple[str, list[dict[str, Any]]]:
        body = {"prompt": CHATML, "temperature": 0, "max_length": 80, "stream": True}
        response = requests.post(f"{server.url}/generate", json=body, timeout=900, stream=True)
        assert response.status_code == 200
        events = [json.loads(line[6:]) for line in response.iter_lines(decode_unicode=True)
                  if line.startswith("data: {")]  # fmt: skip
        return "".join(e.get("text", "") for e in events), [e for e in events if "finish_reason" in e]

    plain, spec = servers
    text, finish = stream(spec)
    assert (text, finish) == stream(plain)
    assert "quick brown fox" in text


def test_stop_strings_and_max_tokens_end_at_the_same_token(servers: tuple[ServerProcess, ServerProcess]) -> None:
    plain, spec = servers
    full = chat(plain)["choices"][0]["message"]["content"]
    stop = full[len(full) // 2 : len(full) // 2 + 6]  # a stop string from the middle of the copied code
    for extra in ({"stop": [stop]}, {"max_tokens": 37}, {"max_tokens": 1}):
        ours, theirs = chat(spec, **extra), chat(plain, **extra)
        assert ours["choices"][0] == theirs["choices"][0], extra
        assert ours["usage"] == theirs["usage"], extra
    assert chat(spec, max_tokens=37)["usage"]["completion_tokens"] == 37


def test_structured_output_does_not_speculate(servers: tuple[ServerProcess, ServerProcess]) -> None:
    plain, spec = servers
    before = spec_counters(spec)
    extra = {"response_format": {"type": "json_object"}, "max_tokens": 40}
    ours, theirs = chat(spec, **extra), chat(plain, **extra)
    assert ours["choices"][0] == theirs["choices"][0]
    assert spec_counters(spec)["draft_tokens_total"] == before["draft_tokens_total"]


def test_the_torch_backend_refuses_speculative_by_name(tmp_path: Path) -> None:
    from tests.conftest import start_server, stop_server

    server = start_server("test:tiny", tmp_path / "torch.log", "--backend", "torch", "--speculative", "ngram",
                          wait_healthy=False)  # fmt: skip
    try:
        server.process.wait(timeout=120)
    except Exception:
        stop_server(server)
        raise
    log = (tmp_path / "torch.log").read_text()
    assert server.process.returncode != 0
    assert "--speculative ngram runs on the llama.cpp backend only, not on torch" in log
