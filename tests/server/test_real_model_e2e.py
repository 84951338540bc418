"""A real instruct model end to end: SmolLM2-135M-Instruct (a Llama-architecture GGUF with its own tokenizer)
served by `qwen3-api serve --model <file.gguf>` answers sensibly through both APIs, and its greedy output is
llama-cpp-python's own greedy output for the same prompt tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from qwen3_api.engine.tokenizer import Tokenizer
from tests.conftest import ServerPool, ServerProcess
from tests.llama_reference import reference_llama
from tests.real_model import smollm2_gguf

pytest.importorskip("llama_cpp")

QUESTION = "What is the capital of France?"
# A 135M model at 4 bits: with its template's default system prompt it rambles (llama-cpp-python's own greedy
# output too), with a plain one it answers.
SYSTEM = "You are a helpful assistant."
PARITY_PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that returns the square of a number.",
    "List three colors of the rainbow.",
]
PARITY_TOKENS = 32


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return smollm2_gguf()


@pytest.fixture(scope="module")
def real_server(smollm2: Path, server_pool: ServerPool) -> ServerProcess:
    # Per-sequence KV (flash attention off), as llama-cpp-python's Llama runs one sequence: the configuration in
    # which our logits are llama.cpp's own bit for bit. The default shared pool with flash attention computes the
    # same model with other kernels, so a greedy near-tie may go the other way there.
    return server_pool.get(str(smollm2), "--no-llamacpp-kv-unified")


def test_models_route_names_the_file(real_server: ServerProcess, smollm2: Path) -> None:
    models = requests.get(f"{real_server.url}/v1/models", timeout=30).json()
    assert [m["id"] for m in models["data"]] == [str(smollm2)]


def test_chat_completion_answers_the_capital_of_france(real_server: ServerProcess) -> None:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    body = {"model": real_server.model, "messages": messages, "temperature": 0, "max_tokens": 32}
    response = requests.post(f"{real_server.url}/v1/chat/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert "Paris" in choice["message"]["content"]
    assert choice["finish_reason"] == "stop"  # ended by the model's <|im_end|>, read from the GGUF


def test_native_generate_answers_the_capital_of_france(real_server: ServerProcess) -> None:
    chatml = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    body = {"prompt": chatml, "temperature": 0, "max_length": 32}  # ChatML prompts are used verbatim
    response = requests.post(f"{real_server.url}/generate", json=body, timeout=300)
    assert response.status_code == 200, response.text
    text = response.json()["generated_texts"][0]
    assert "Paris" in text and "<|im_end|>" not in text


def test_greedy_output_equals_llama_cpp_pythons_own(real_server: ServerProcess, smollm2: Path) -> None:
    tokenizer = Tokenizer.from_gguf(smollm2)
    prompts = [tokenizer.prompt_token_ids(prompt) for prompt in PARITY_PROMPTS]
    # The reference runs first and is closed before the server works: two llama.cpp thread pools spinning on the
    # same few cores slow each other down ~10x.
    reference = reference_llama(smollm2, n_ctx=1024, n_threads=1)
    expected = [reference.create_completion(prompt=ids, max_tokens=PARITY_TOKENS, temperature=0.0) for ids in prompts]
    reference.close()
    for prompt, prompt_ids, theirs in zip(PARITY_PROMPTS, prompts, expected, strict=True):
        body = {"model": real_server.model, "prompt": prompt_ids, "max_tokens": PARITY_TOKENS, "temperature": 0}
        response = requests.post(f"{real_server.url}/v1/completions", json=body, timeout=300)
        assert response.status_code == 200, response.text
        ours = response.json()
        assert ours["choices"][0]["text"] == theirs["choices"][0]["text"], prompt
        finish = ours["choices"][0]["finish_reason"]
        assert finish == theirs["choices"][0]["finish_reason"], prompt
        # Our usage counts the end token that stopped the output (as vLLM does); llama-cpp-python's does not.
        assert ours["usage"]["completion_tokens"] == theirs["usage"]["completion_tokens"] + (finish == "stop")
        assert ours["usage"]["prompt_tokens"] == len(prompt_ids)
