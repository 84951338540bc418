"""The tokenizer of a GGUF model: llama.cpp's own vocabulary, the file's chat template and end tokens.

Encoding and token bytes come from llama.cpp itself (`LlamaVocab`), so prompts are tokenized exactly as llama.cpp
would tokenize them for any GGUF it can run (byte-level BPE with any pre-tokenizer, SentencePiece, ...); note that
llama.cpp applies no Unicode normalisation (Qwen's HF tokenizer applies NFC first). The chat template is rendered
by transformers' Jinja renderer, the one HF tokenizers use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qwen3_api.engine.tokenizer import GenerationDefaults, Tokenizer
from qwen3_api.models.gguf import read_gguf_metadata
from qwen3_api.models.llama_vocab import LlamaVocab

# Control tokens that end a turn or a text in the chat formats llama.cpp knows (ChatML, Llama 3, Gemma, Phi).
# llama.cpp's own end-of-generation set is wider (fill-in-the-middle markers such as <reponame> are in it), so
# only these join the file's eos/eot/eom ids.
CHAT_END_TOKENS = (
    "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<end_of_turn>", "<|end|>",
)  # fmt: skip
_GGUF_CONTROL, _GGUF_UNUSED = 3, 5  # tokenizer.ggml.token_type values


def _float32_value(value: Any) -> float | None:
    # GGUF stores sampling defaults as float32: 0.6 reads back as 0.6000000238.
    return None if value is None else float(f"{float(value):.6g}")


class GGUFTokenizer(Tokenizer):
    """`Tokenizer` on llama.cpp's vocabulary of a GGUF file (no HF tokenizer: `hf` is None)."""

    def __init__(self, path: Path, metadata: dict[str, Any] | None = None) -> None:
        metadata = metadata if metadata is not None else read_gguf_metadata(path)
        self.vocab = LlamaVocab(path)
        self.hf = None
        self._pieces = [self.vocab.piece(i) for i in range(self.vocab.n_tokens)]
        self._control_ids = frozenset(i for i in range(self.vocab.n_tokens) if self.vocab.is_control(i))
        self._added_ids = set(self._control_ids)
        self.chat_template: str | None = metadata.get("tokenizer.chat_template")
        # Token ids a prompt may hold: up to the last real token (files pad the vocabulary to the embedding rows).
        types: list[int] = metadata.get("tokenizer.ggml.token_type") or []
        used = [i for i, kind in enumerate(types[: self.vocab.n_tokens]) if kind != _GGUF_UNUSED]
        self.vocab_size = used[-1] + 1 if used else self.vocab.n_tokens
        self.supports_thinking = "enable_thinking" in (self.chat_template or "")
        # Qwen3's thought markers, when the vocabulary has each as one token of its own.
        marks = [self.vocab.tokenize(mark) for mark in ("<think>", "</think>")]
        texts = (b"<think>", b"</think>")
        single = all(len(ids) == 1 and self._pieces[ids[0]] == text for ids, text in zip(marks, texts, strict=True))
        self._think_ids = (marks[0][0], marks[1][0]) if single else None
        self.generation = GenerationDefaults(
            eos_token_ids=self._end_token_ids(metadata),
            temperature=_float32_value(metadata.get("general.sampling.temp")),
            top_p=_float32_value(metadata.get("general.sampling.top_p")),
            top_k=metadata.get("general.sampling.top_k"),
        )
        # What HF tokenizers hand a chat template as bos_token, eos_token, ... (templates print them as text).
        self._template_tokens = {
            f"{name}_token": self._pieces[token_id].decode(errors="replace")
            for name, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding"))
            if isinstance(token_id := metadata.get(f"tokenizer.ggml.{key}_token_id"), int)
            and 0 <= token_id < self.vocab_size
        }

    def _end_token_ids(self, metadata: dict[str, Any]) -> tuple[int, ...]:
        """The file's eos (first), eot and eom ids, then the chat end tokens it has as control tokens."""
        types: list[int] = metadata.get("tokenizer.ggml.token_type") or []
        ids = [metadata.get(f"tokenizer.ggml.{key}_token_id") for key in ("eos", "eot", "eom")]
        by_text = {piece: i for i, piece in enumerate(self._pieces) if i in self._control_ids}
        for text in CHAT_END_TOKENS:
            token_id = by_text.get(text.encode())
            if token_id is not None and token_id < len(types) and types[token_id] == _GGUF_CONTROL:
                ids.append(token_id)
        return tuple(dict.fromkeys(i for i in ids if isinstance(i, int) and 0 <= i < self.vocab.n_tokens))

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` verbatim, as llama.cpp tokenizes it; special-token markers become their ids."""
        return self.vocab.tokenize(text)

    def token_bytes(self, token_id: int) -> bytes:
        return self._pieces[token_id] if 0 <= token_id < len(self._pieces) else b""

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        skipped = self._control_ids if skip_special_tokens else frozenset()
        data = b"".join(self._pieces[i] for i in token_ids if i not in skipped and 0 <= i < len(self._pieces))
        return data.decode("utf-8", errors="replace")

    def grammar_tokenizer(self, vocab_size: int) -> Any:
        """llguidance's tokenizer over llama.cpp's vocabulary (it tokenizes through llama.cpp too)."""
        from llguidance.llamacpp import lltokenizer_from_vocab

        return lltokenizer_from_vocab(self.vocab.pointer, n_vocab=vocab_size, eos_token=list(self.eos_token_ids))

    def _apply_template(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, add_generation_prompt: bool,
        kwargs: dict[str, Any],
    ) -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        if not self.chat_template:
            raise ValueError(f"{self.vocab.path.name} has no chat template (tokenizer.chat_template)")
        rendered: Any = render_jinja_template(
            conversations=[messages], tools=tools, chat_template=self.chat_template,  # type: ignore[arg-type]
            add_generation_prompt=add_generation_prompt, **{**self._template_tokens, **kwargs},
        )  # fmt: skip
        return str(rendered[0][0])  # (one text per conversation, generation indices)
