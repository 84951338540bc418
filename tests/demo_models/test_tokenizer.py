"""The locally built Qwen3 tokenizer equals tiktoken on the same vocabulary, with Qwen3's special tokens."""

from __future__ import annotations

import random
import unicodedata

import pytest
import tiktoken
from tiktoken.load import load_tiktoken_bpe
from transformers import AutoTokenizer

from qwen3_api.demo_models.tokenizer import QWEN3_ADDED_TOKENS, qwen_pattern, tiktoken_file


@pytest.fixture(scope="module")
def reference() -> tiktoken.Encoding:
    ranks = load_tiktoken_bpe(str(tiktoken_file()))
    specials = {text: token_id for token_id, text, _ in QWEN3_ADDED_TOKENS}
    return tiktoken.Encoding("qwen3", pat_str=qwen_pattern(), mergeable_ranks=ranks, special_tokens=specials)


@pytest.fixture(scope="module")
def ours(tiny_model_dir):  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def varied_strings() -> list[str]:
    fixed = [
        "Hello, world!",
        "The quick brown fox jumps over the lazy dog.",
        "你好，世界！今天天气很好。",
        "机器学习是人工智能的一个分支。",
        "def add(a, b):\n    return a + b\n",
        "for (int i = 0; i < n; ++i) { sum += a[i]; }",
        "emoji 😀🎉👍🏽 and family 👨‍👩‍👧‍👦",
        "    leading spaces and\t\ttabs\n\n\nnewlines",
        "1234567890 3.14159 1e-10 0xFF",
        "Ünïcödé çhàrs: café naïve résumé",
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
        "<think>\nreasoning\n</think>\n\nanswer",
        '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>',
        "мир привет",
        "مرحبا بالعالم",
        "I'm can't won't they're we've you'll he'd",
        "   ",
        "\r\n\r\n",
        "a" * 100,
        "https://example.com/path?query=1&b=2#frag",
    ]
    rng = random.Random(1234)
    alphabet = list("abcXYZ019 \n\t.,;:!?'\"()[]{}<>+-*/=_你好世界的一是😀🎉é") + ["<|im_end|>", "<think>", " the", "  "]
    generated = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(300)]
    return fixed + generated


def test_special_token_ids_are_qwen3s(ours) -> None:  # type: ignore[no-untyped-def]
    for token_id, text, special in QWEN3_ADDED_TOKENS:
        assert ours.convert_tokens_to_ids(text) == token_id, text
        assert ours.decode([token_id], skip_special_tokens=True) == ("" if special else text)
    assert len(ours) == 151669


def test_ids_equal_tiktoken(ours, reference) -> None:  # type: ignore[no-untyped-def]
    strings = varied_strings()
    assert len(strings) >= 300
    for text in strings:
        normalized = unicodedata.normalize("NFC", text)  # Qwen normalizes to NFC before encoding
        expected = reference.encode(normalized, allowed_special="all")
        assert ours.encode(text, add_special_tokens=False) == expected, repr(text)


def test_decode_roundtrips(ours) -> None:  # type: ignore[no-untyped-def]
    for text in varied_strings()[:50]:
        normalized = unicodedata.normalize("NFC", text)
        assert ours.decode(ours.encode(text, add_special_tokens=False)) == normalized
