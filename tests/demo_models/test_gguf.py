"""GGUF files of the test models: the metadata llama.cpp needs, llama.cpp loads and runs them, and the tokenizer
read back from the GGUF (ours and llama.cpp's) gives the HF tokenizer's ids."""

from __future__ import annotations

import random
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from qwen3_api.demo_models.checkpoints import VOCAB_SIZE, parse_test_model_spec
from qwen3_api.demo_models.gguf import cached_test_gguf
from qwen3_api.demo_models.tokenizer import QWEN3_ADDED_TOKENS
from qwen3_api.engine.tokenizer import Tokenizer
from qwen3_api.models.gguf import read_gguf_metadata
from tests.conftest import REPO_ROOT
from tests.llama_reference import reference_llama

gguf = pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def tiny_q8() -> Path:
    return cached_test_gguf("Q8_0", shape="tiny")


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_model_dir: Path) -> Tokenizer:
    return Tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def gguf_tokenizer(tiny_q8: Path) -> Tokenizer:
    return Tokenizer.from_gguf(tiny_q8)


@pytest.fixture(scope="module")
def llama_vocab(tiny_q8: Path):  # type: ignore[no-untyped-def]
    return llama_cpp.Llama(model_path=str(tiny_q8), vocab_only=True, verbose=False)


def field_value(reader, key: str):  # type: ignore[no-untyped-def]
    return reader.fields[key].contents()


def test_gguf_reader_sees_the_metadata_and_weights_llama_cpp_needs(tiny_q8: Path, tiny_model_dir: Path) -> None:

    reader = gguf.GGUFReader(tiny_q8)
    expected = {
        "general.architecture": "qwen3",
        "general.file_type": int(gguf.LlamaFileType.MOSTLY_Q8_0),
        "qwen3.context_length": 40960,
        "qwen3.embedding_length": 64,
        "qwen3.block_count": 2,
        "qwen3.feed_forward_length": 128,
        "qwen3.attention.head_count": 4,
        "qwen3.attention.head_count_kv": 2,
        "qwen3.attention.key_length": 16,
        "qwen3.attention.value_length": 16,
        "qwen3.rope.freq_base": 1e6,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "qwen2",
        "tokenizer.ggml.eos_token_id": 151645,
        "tokenizer.ggml.bos_token_id": 151643,
        "tokenizer.ggml.padding_token_id": 151643,
        "tokenizer.ggml.add_bos_token": False,
    }
    for key, value in expected.items():
        assert field_value(reader, key) == pytest.approx(value), key
    assert field_value(reader, "qwen3.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    assert "enable_thinking" in field_value(reader, "tokenizer.chat_template")

    tokens = field_value(reader, "tokenizer.ggml.tokens")
    types = field_value(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == VOCAB_SIZE
    control, user_defined = int(gguf.TokenType.CONTROL), int(gguf.TokenType.USER_DEFINED)
    for token_id, text, special in QWEN3_ADDED_TOKENS:
        assert tokens[token_id] == text
        looks_special = text.startswith("<|")  # llama.cpp's convert script makes every <|...|> a control token
        assert types[token_id] == (control if special or looks_special else user_defined), text
    assert types[0] == int(gguf.TokenType.NORMAL) and types[-1] == int(gguf.TokenType.UNUSED)
    assert field_value(reader, "tokenizer.ggml.merges")[0] == "Ġ Ġ"

    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 1 + 2 * 11 + 1  # embeddings, 11 per layer, final norm; tied output
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert tensors["blk.1.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    for name in ("output_norm.weight", "blk.0.attn_norm.weight", "blk.0.attn_q_norm.weight"):
        assert tensors[name].tensor_type == gguf.GGMLQuantizationType.F32, name
    # Each tensor holds its own safetensors weight (names mapped right, not transposed), within Q8_0 rounding.
    source = load_file(tiny_model_dir / "model.safetensors")
    for hf_name, gguf_name in [("model.embed_tokens.weight", "token_embd.weight"),
                               ("model.layers.1.mlp.gate_proj.weight", "blk.1.ffn_gate.weight"),
                               ("model.layers.1.mlp.up_proj.weight", "blk.1.ffn_up.weight"),
                               ("model.layers.0.self_attn.k_proj.weight", "blk.0.attn_k.weight")]:  # fmt: skip
        tensor = tensors[gguf_name]
        weights = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        expected = source[hf_name]
        assert weights.shape == expected.shape, gguf_name
        np.testing.assert_allclose(weights, expected, atol=np.abs(expected).max() / 127, err_msg=gguf_name)

    # The fast reader the server uses agrees with the gguf package on every key.
    ours = read_gguf_metadata(tiny_q8)
    assert set(ours) == {k for k in reader.fields if not k.startswith("GGUF.")}
    for key, value in ours.items():
        assert value == (
            pytest.approx(field_value(reader, key)) if isinstance(value, float) else field_value(reader, key)
        ), key


@pytest.mark.parametrize("qtype", ["F32", "Q8_0", "Q4_0"])
def test_llama_cpp_loads_and_runs_the_file(qtype: str, hf_tokenizer: Tokenizer) -> None:
    path = cached_test_gguf(qtype, shape="tiny")  # type: ignore[arg-type]
    llm = reference_llama(path, n_ctx=64, n_threads=1, logits_all=True)
    prompt = hf_tokenizer.encode("<|im_start|>user\nHello, world!<|im_end|>\n<|im_start|>assistant\n")
    llm.eval(prompt)
    logits = np.asarray(llm.scores[len(prompt) - 1])
    assert logits.shape == (VOCAB_SIZE,)
    assert np.isfinite(logits).all() and np.abs(logits).max() > 0
    assert llm.token_eos() == 151645 and llm.n_vocab() == VOCAB_SIZE


def test_q4_0_file_quantizes_layers_to_4_bits_and_keeps_the_embedding_at_8(tiny_model_dir: Path) -> None:
    reader = gguf.GGUFReader(cached_test_gguf("Q4_0", shape="tiny"))
    assert field_value(reader, "general.file_type") == int(gguf.LlamaFileType.MOSTLY_Q4_0)
    tensors = {t.name: t for t in reader.tensors}
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert tensors["output_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    source = load_file(tiny_model_dir / "model.safetensors")
    for hf_name, gguf_name in [("model.layers.1.mlp.down_proj.weight", "blk.1.ffn_down.weight"),
                               ("model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight")]:  # fmt: skip
        tensor = tensors[gguf_name]
        assert tensor.tensor_type == gguf.GGMLQuantizationType.Q4_0, gguf_name
        weights = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        expected = source[hf_name]
        # 16 levels per block of 32: error up to one step, i.e. a block's max |w| / 8.
        np.testing.assert_allclose(weights, expected, atol=np.abs(expected).max() / 8, err_msg=gguf_name)
        assert np.abs(weights - expected).max() > np.abs(expected).max() / 127  # really coarser than 8 bits


def test_cached_gguf_is_built_once_next_to_the_model(tiny_q8: Path, tiny_model_dir: Path) -> None:
    assert tiny_q8.parent == tiny_model_dir.parent
    assert tiny_q8.name == f"{tiny_model_dir.name}-Q8_0.gguf"
    mtime = tiny_q8.stat().st_mtime_ns
    assert cached_test_gguf("q8_0", shape="tiny") == tiny_q8  # any case
    assert tiny_q8.stat().st_mtime_ns == mtime
    assert not list(tiny_q8.parent.glob(f"{tiny_q8.name}.*.partial"))
    with pytest.raises(ValueError, match="F32, F16, BF16, Q8_0, Q4_0"):
        cached_test_gguf("Q4_K", shape="tiny")  # type: ignore[arg-type]


def test_test_model_spec_takes_a_gguf_type() -> None:
    assert parse_test_model_spec("test:tiny:gguf=q8_0") == {"shape": "tiny", "gguf": "Q8_0"}
    assert parse_test_model_spec("test:0.6b:seed=2,gguf=F16") == {"shape": "0.6b", "seed": 2, "gguf": "F16"}
    with pytest.raises(ValueError, match="unknown GGUF type"):
        parse_test_model_spec("test:tiny:gguf=Q4_K")


# --- the tokenizer the GGUF carries -------------------------------------------------------------------------

# fmt: off
PIECES = [
    "Hello", " world", "The quick brown fox", " jumps over the lazy dog.", "I'M", " can't", " WE'LL", "they'D",
    "你好", "，世界！", "机器学习是人工智能的一个分支。", "東京タワー", "こんにちは", "안녕하세요", "мир привет",
    "مرحبا", "שלום", "नमस्ते", "Ελληνικά", "😀", "🎉👍🏽", "👨‍👩‍👧‍👦", "🇯🇵", "✨", "∑∫√≈≠", "café", "cafe\u0301",
    "e\u0301\u0301", "Å", "A\u030a", "ﬁ", "Ⅻ", "１２３", "0", "12", "123456789", "3.14159", "-1e-10", "0xFF",
    "def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) {", "}", "\tif a != b:", "<div class=\"x\">",
    "SELECT * FROM t;", "https://example.com/a?b=1&c=2#d", "a_b-c.d/e\\f", "@#$%^&*()", "''", "\"\"\"",
    " ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\n\n\n", "\r\n", " \n ", "    ", "        x",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "<tool_call>", "</tool_call>",
    "<tool_response>", "<|fim_prefix|>", "<|fim_middle|>", "<|vision_pad|>", "<|im_start", "im_end|>", "<think",
    "user", "assistant", "system", "\u00a0", "\u200b", "\u3000", "a" * 40, "ab" * 20, "!!!", "...", "—", "…",
]
# fmt: on


def varied_strings() -> list[str]:
    """A few hundred strings: scripts, code, emoji, combining marks, whitespace runs, digits, special tokens."""
    fixed = [
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
        "<think>\nLet me think: 2 + 2 = 4.\n</think>\n\nThe answer is 4.",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>',
        "", " ", "a", "   leading", "trailing   ", "multiple   inner    spaces", "\n\n\n\n\n",
    ]  # fmt: skip
    rng = random.Random(20261125)
    separators = ["", "", " ", "\n", "  ", "\t"]
    generated = []
    for _ in range(300):
        parts = [rng.choice(PIECES) for _ in range(rng.randint(1, 6))]
        generated.append("".join(p + rng.choice(separators) for p in parts))
    return fixed + PIECES + generated


def test_gguf_tokenizer_matches_the_hf_tokenizer(gguf_tokenizer: Tokenizer, hf_tokenizer: Tokenizer) -> None:
    strings = varied_strings()
    assert len(strings) >= 300
    for text in strings:
        # llama.cpp, which the GGUF tokenizer is, skips the NFC that Qwen's tokenizer.json applies first.
        normalized = unicodedata.normalize("NFC", text)
        assert gguf_tokenizer.encode(normalized) == hf_tokenizer.encode(normalized), repr(text)
    ids = [i for text in strings[:50] for i in hf_tokenizer.encode(text)]
    assert gguf_tokenizer.decode(ids, skip_special_tokens=False) == hf_tokenizer.decode(ids, skip_special_tokens=False)
    assert all(gguf_tokenizer.token_bytes(i) == hf_tokenizer.token_bytes(i) for i in range(0, 151669, 13))
    assert gguf_tokenizer.vocab_size == hf_tokenizer.vocab_size


def test_llama_cpp_tokenizer_matches_the_hf_tokenizer(llama_vocab, hf_tokenizer: Tokenizer) -> None:  # type: ignore[no-untyped-def]
    for text in varied_strings():
        normalized = unicodedata.normalize("NFC", text)  # llama.cpp does not apply the NFC that Qwen's tokenizer does
        got = llama_vocab.tokenize(normalized.encode(), add_bos=False, special=True)
        assert got == hf_tokenizer.encode(normalized), repr(text)


def test_gguf_tokenizer_is_llama_cpps_own_tokenization(llama_vocab, gguf_tokenizer: Tokenizer) -> None:  # type: ignore[no-untyped-def]
    unnormalized = [text for text in varied_strings() if unicodedata.normalize("NFC", text) != text]
    assert unnormalized  # the strings where an HF rebuild with NFC would differ from llama.cpp
    for text in varied_strings():
        assert gguf_tokenizer.encode(text) == llama_vocab.tokenize(text.encode(), add_bos=False, special=True), repr(text)


def test_gguf_tokenizer_carries_end_tokens_template_and_sampling(
    gguf_tokenizer: Tokenizer, hf_tokenizer: Tokenizer
) -> None:
    assert gguf_tokenizer.eos_token_ids == (151645, 151643)
    assert gguf_tokenizer.generation == hf_tokenizer.generation
    assert gguf_tokenizer.supports_thinking
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 你好"}]
    for thinking in (True, False):
        assert gguf_tokenizer.render_chat(messages, enable_thinking=thinking) == hf_tokenizer.render_chat(
            messages, enable_thinking=thinking
        )
    assert gguf_tokenizer.prompt_token_ids("Hello") == hf_tokenizer.prompt_token_ids("Hello")


def test_make_test_model_writes_a_gguf(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "qwen3_api.cli", "make-test-model", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)

    bad = cli(str(tmp_path / "bad"), "--gguf", "Q4_K")
    assert bad.returncode == 2 and "unknown GGUF type" in bad.stderr
    assert not (tmp_path / "bad").exists()
    out = tmp_path / "m"
    result = cli(str(out), "--shape", "tiny", "--gguf", "F16")
    assert result.returncode == 0, result.stderr
    written = out / "m-F16.gguf"
    assert written.is_file() and str(written) in result.stdout
    metadata = read_gguf_metadata(written)
    assert metadata["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_F16)
    assert metadata["qwen3.block_count"] == 2
