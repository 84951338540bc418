"""The model's tokenizer and chat template, as the engine and the APIs use them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwen3_api.errors import InvalidRequestError

CHATML_MARKER = "<|im_start|>"


def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's printable stand-in character for each byte value, inverted (character -> byte)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


BYTE_OF_CHAR = _byte_level_alphabet()


@dataclass(frozen=True)
class GenerationDefaults:
    """What the model's generation_config.json says: end tokens and sampling defaults."""

    eos_token_ids: tuple[int, ...]
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None

    @classmethod
    def from_dir(cls, model_dir: Path, fallback_eos: tuple[int, ...]) -> GenerationDefaults:
        path = model_dir / "generation_config.json"
        config = json.loads(path.read_text()) if path.exists() else {}
        eos = config.get("eos_token_id", list(fallback_eos))
        eos_ids = tuple(eos) if isinstance(eos, list) else (eos,)
        return cls(
            eos_token_ids=tuple(int(i) for i in eos_ids if i is not None) or fallback_eos,
            temperature=config.get("temperature"),
            top_p=config.get("top_p"),
            top_k=config.get("top_k"),
        )


# Qwen's pre-tokenizer split, as in every Qwen2/Qwen2.5/Qwen3 tokenizer.json (llama.cpp's "qwen2" pre-tokenizer).
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Both end a Qwen3 turn or text; the generation config lists both, a GGUF's eos names only one.
QWEN3_END_TOKENS = ("<|im_end|>", "<|endoftext|>")
# llama.cpp token types (tokenizer.ggml.token_type).
_GGUF_NORMAL, _GGUF_CONTROL, _GGUF_USER_DEFINED = 1, 3, 4


def _float32_value(value: Any) -> float | None:
    # GGUF stores sampling defaults as float32: 0.6 reads back as 0.6000000238.
    return None if value is None else float(f"{float(value):.6g}")


def _hf_tokenizer_from_gguf(metadata: dict[str, Any]) -> Any:
    """The HF fast tokenizer a Qwen GGUF describes (byte-level BPE with the qwen2 pre-tokenizer).

    Built directly with `tokenizers`: transformers' own GGUF path gives the same ids but takes ~30 s on a
    151k vocabulary. NFC is applied like Qwen's tokenizer.json does (llama.cpp itself skips it).
    """
    from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as BackendTokenizer
    from transformers import PreTrainedTokenizerFast

    from qwen3_api.errors import ModelLoadError

    model, pre = metadata.get("tokenizer.ggml.model"), metadata.get("tokenizer.ggml.pre")
    if model != "gpt2" or pre != "qwen2":
        raise ModelLoadError(f"unsupported GGUF tokenizer {model}/{pre}; Qwen3 GGUFs have gpt2/qwen2")
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    types: list[int] = metadata.get("tokenizer.ggml.token_type") or [_GGUF_NORMAL] * len(tokens)
    added = [
        (i, t)
        for i, (t, kind) in enumerate(zip(tokens, types, strict=True))
        if kind in (_GGUF_CONTROL, _GGUF_USER_DEFINED)
    ]
    vocab = {t: i for i, (t, kind) in enumerate(zip(tokens, types, strict=True)) if kind == _GGUF_NORMAL}
    merges = [tuple(m.split(" ", 1)) for m in metadata["tokenizer.ggml.merges"]]
    backend = BackendTokenizer(models.BPE(vocab, merges, ignore_merges=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    for token_id, text in added:
        # Added in id order right after the base vocabulary, so each gets its id; checked below.
        special = types[token_id] == _GGUF_CONTROL
        token = AddedToken(text, special=special, normalized=False, single_word=False, lstrip=False, rstrip=False)
        if special:
            backend.add_special_tokens([token])
        else:
            backend.add_tokens([token])
        if backend.token_to_id(text) != token_id:
            raise ModelLoadError(f"GGUF token {text!r} should have id {token_id}, got {backend.token_to_id(text)}")

    def text_of(key: str) -> str | None:
        token_id = metadata.get(key)
        return tokens[token_id] if isinstance(token_id, int) and 0 <= token_id < len(tokens) else None

    hf = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=text_of("tokenizer.ggml.eos_token_id"),
        pad_token=text_of("tokenizer.ggml.padding_token_id"),
        model_max_length=int(metadata.get(f"{metadata.get('general.architecture')}.context_length", 40960)),
        clean_up_tokenization_spaces=False,
    )
    hf.chat_template = metadata.get("tokenizer.chat_template")
    return hf


class Tokenizer:
    """Wraps an HF fast tokenizer: encoding, chat rendering and the model's end tokens."""

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoTokenizer

        hf: Any = AutoTokenizer.from_pretrained(str(model_dir))
        fallback = tuple(i for i in (hf.convert_tokens_to_ids("<|im_end|>"), hf.eos_token_id) if i is not None)
        self._setup(hf, GenerationDefaults.from_dir(model_dir, fallback))

    @classmethod
    def from_gguf(cls, path: Path) -> Tokenizer:
        """The tokenizer, chat template, end tokens and sampling defaults stored in a GGUF file."""
        from qwen3_api.models.gguf import read_gguf_metadata

        return cls.from_gguf_metadata(read_gguf_metadata(path))

    @classmethod
    def from_gguf_metadata(cls, metadata: dict[str, Any]) -> Tokenizer:
        """`from_gguf` for metadata already read (it holds the whole vocabulary: ~0.4 s to parse)."""
        hf = _hf_tokenizer_from_gguf(metadata)
        # Like generation_config.json's list: the GGUF's eos, then Qwen3's other end tokens.
        vocab = hf.get_vocab()
        eos = [metadata.get("tokenizer.ggml.eos_token_id"), *(vocab.get(t) for t in QWEN3_END_TOKENS)]
        generation = GenerationDefaults(
            eos_token_ids=tuple(dict.fromkeys(int(i) for i in eos if i is not None)),
            temperature=_float32_value(metadata.get("general.sampling.temp")),
            top_p=_float32_value(metadata.get("general.sampling.top_p")),
            top_k=metadata.get("general.sampling.top_k"),
        )
        tokenizer = cls.__new__(cls)
        tokenizer._setup(hf, generation)
        return tokenizer

    def _setup(self, hf: Any, generation: GenerationDefaults) -> None:
        self.hf = hf
        self.generation = generation
        self.vocab_size = len(self.hf)
        self._added_ids = set(self.hf.added_tokens_decoder)
        template = self.hf.chat_template if isinstance(self.hf.chat_template, str) else ""
        self.supports_thinking = "enable_thinking" in template
        markers = ("<think>", "</think>")
        ids = [self.hf.convert_tokens_to_ids(m) for m in markers]
        pairs = zip(ids, markers, strict=True)
        known = all(isinstance(i, int) and self.hf.convert_ids_to_tokens(i) == m for i, m in pairs)
        self._think_ids = (ids[0], ids[1]) if known else None

    @property
    def think_token_ids(self) -> tuple[int, int] | None:
        """The ids of `<think>` and `</think>` (Qwen3's thought markers), or None if the vocabulary lacks them."""
        return self._think_ids

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self.generation.eos_token_ids

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` verbatim; special-token markers in it become their ids."""
        return list(self.hf.encode(text, add_special_tokens=False))

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes a token stands for (added tokens: their text)."""
        piece = self.hf.convert_ids_to_tokens(token_id)
        if piece is None:
            return b""
        if token_id in self._added_ids:
            return str(piece).encode()
        return bytes(BYTE_OF_CHAR.get(ch, 0) for ch in piece)

    def token_text(self, token_id: int) -> str:
        """A token as text for logprobs; incomplete UTF-8 shows as bytes:\\xNN like OpenAI."""
        raw = self.token_bytes(token_id)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return str(self.hf.decode(token_ids, skip_special_tokens=skip_special_tokens))

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        enable_thinking: bool | None = None,
        add_generation_prompt: bool = True,
        extra_template_kwargs: dict[str, Any] | None = None,
    ) -> str:
        """The prompt text the chat template makes of `messages`."""
        kwargs = dict(extra_template_kwargs or {})
        if enable_thinking is not None:
            kwargs["enable_thinking"] = enable_thinking
        try:
            return str(
                self.hf.apply_chat_template(
                    messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
                )
            )
        except Exception as exc:  # template errors are caused by the messages given
            raise InvalidRequestError(f"cannot apply the chat template to these messages: {exc}", "messages") from exc

    def prompt_token_ids(self, prompt: str, raw: bool = False, enable_thinking: bool = False) -> list[int]:
        """The original API's prompt rule: ChatML text (or raw=True) is used verbatim, anything else is one
        user message rendered by the chat template with thinking off (on with `enable_thinking`)."""
        if raw or CHATML_MARKER in prompt:
            return self.encode(prompt)
        return self.encode(self.render_chat([{"role": "user", "content": prompt}], enable_thinking=enable_thinking))
