"""The tokenizer of a GGUF that is not a Qwen (SmolLM2: gpt2/smollm BPE, Llama architecture, ChatML) is
llama.cpp's own tokenization, and its template, end tokens and special tokens come from the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen3_api.engine.tokenizer import Tokenizer
from qwen3_api.models.gguf import read_gguf_metadata
from tests.demo_models.test_gguf import varied_strings
from tests.real_model import smollm2_gguf

llama_cpp = pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return smollm2_gguf()


@pytest.fixture(scope="module")
def tokenizer(smollm2: Path) -> Tokenizer:
    return Tokenizer.from_gguf(smollm2)


@pytest.fixture(scope="module")
def llama_vocab(smollm2: Path):  # type: ignore[no-untyped-def]
    return llama_cpp.Llama(model_path=str(smollm2), vocab_only=True, verbose=False)


# SmolLM2's own markers and code-ish text: digits are split one by one by its pre-tokenizer, unlike GPT-2's.
SMOLLM_STRINGS = [
    "<|im_start|>user\nWhat is 12345 + 678?<|im_end|>\n<|im_start|>assistant\n", "<repo_name>a/b<file_sep>x.py",
    "3.14159265358979", "2026-12-01T09:15:00Z", "x = [1, 22, 333]\nprint(x)\n", "<|endoftext|>", "<|im_start",
    "  indented\n\tand tabbed\r\n", "naïve café — “quoted” …", "数学 123 テスト", "🙂🙃 emoji",
]  # fmt: skip


def test_encoding_is_llama_cpps_token_for_token(tokenizer: Tokenizer, llama_vocab) -> None:  # type: ignore[no-untyped-def]
    strings = SMOLLM_STRINGS + varied_strings()
    assert len(strings) > 300
    for text in strings:
        expected = llama_vocab.tokenize(text.encode(), add_bos=False, special=True)
        assert tokenizer.encode(text) == expected, repr(text)
    # Digits one by one (smollm pre-tokenizer), special markers as one token each.
    assert len(tokenizer.encode("12345")) == 5
    assert tokenizer.encode("<|im_start|>user") == [1, *llama_vocab.tokenize(b"user", add_bos=False, special=True)]


def test_decoding_matches_llama_cpps_detokenizer(tokenizer: Tokenizer, llama_vocab) -> None:  # type: ignore[no-untyped-def]
    for text in SMOLLM_STRINGS + varied_strings()[:100]:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids, skip_special_tokens=False) == text, repr(text)
        assert tokenizer.decode(ids, skip_special_tokens=False).encode() == llama_vocab.detokenize(ids, special=True)
    ids = tokenizer.encode("<|im_start|>assistant\nParis.<|im_end|>")
    assert tokenizer.decode(ids) == "assistant\nParis."  # control tokens skipped
    assert tokenizer.token_bytes(2) == b"<|im_end|>" and tokenizer.token_text(tokenizer.encode(" Paris")[0]) == " Paris"


def test_template_end_and_special_tokens_come_from_the_file(tokenizer: Tokenizer, smollm2: Path) -> None:
    metadata = read_gguf_metadata(smollm2)
    assert metadata["tokenizer.ggml.pre"] == "smollm"
    assert tokenizer.eos_token_ids == (2, 0)  # <|im_end|> (the file's eos), then <|endoftext|>
    assert tokenizer.vocab_size == 49152
    assert not tokenizer.supports_thinking
    prompt = tokenizer.render_chat([{"role": "user", "content": "Hi"}])
    assert prompt == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer.prompt_token_ids("Hi") == tokenizer.encode(prompt)
    assert tokenizer.prompt_token_ids("Hi")[:1] == [1]  # <|im_start|> as its id, no BOS added in front


def test_think_markers_of_a_qwen_gguf_are_the_hf_tokenizers(tiny_model_dir: Path) -> None:
    """The thinking budget needs `<think>`/`</think>` ids on llama.cpp too; SmolLM2 has no such tokens."""
    from qwen3_api.demo_models.gguf import cached_test_gguf

    qwen = Tokenizer.from_gguf(cached_test_gguf("F32", shape="tiny"))
    assert qwen.think_token_ids == Tokenizer(tiny_model_dir).think_token_ids == (151667, 151668)


def test_a_vocabulary_without_think_tokens_has_no_markers(tokenizer: Tokenizer) -> None:
    assert tokenizer.think_token_ids is None
