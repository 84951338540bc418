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


class Tokenizer:
    """Wraps an HF fast tokenizer: encoding, chat rendering and the model's end tokens."""

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoTokenizer

        hf: Any = AutoTokenizer.from_pretrained(str(model_dir))
        fallback = tuple(i for i in (hf.convert_tokens_to_ids("<|im_end|>"), hf.eos_token_id) if i is not None)
        self._setup(hf, GenerationDefaults.from_dir(model_dir, fallback))

    @classmethod
    def from_gguf(cls, path: Path, metadata: dict[str, Any] | None = None) -> Tokenizer:
        """The tokenizer of a GGUF file: llama.cpp's own vocabulary, with the chat template, end tokens and
        sampling defaults stored in the file (`metadata`: the file's header, when already read)."""
        from qwen3_api.engine.gguf_tokenizer import GGUFTokenizer

        return GGUFTokenizer(path, metadata)

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

    def grammar_tokenizer(self, vocab_size: int) -> Any:
        """What structured output compiles grammars against (see `GrammarCompiler`): the HF tokenizer here."""
        return self.hf

    def _apply_template(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, add_generation_prompt: bool,
        kwargs: dict[str, Any],
    ) -> str:
        return str(
            self.hf.apply_chat_template(
                messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
            )
        )

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        enable_thinking: bool | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """The prompt text the chat template makes of `messages` (the only template variable a request sets is
        `enable_thinking`)."""
        kwargs: dict[str, Any] = {}
        if enable_thinking is not None:
            kwargs["enable_thinking"] = enable_thinking
        try:
            return self._apply_template(messages, tools, add_generation_prompt, kwargs)
        except Exception as exc:  # template errors are caused by the messages given
            raise InvalidRequestError(f"cannot apply the chat template to these messages: {exc}", "messages") from exc

    def prompt_token_ids(self, prompt: str, raw: bool = False, enable_thinking: bool = False) -> list[int]:
        """The original API's prompt rule: ChatML text (or raw=True) is used verbatim, anything else is one
        user message rendered by the chat template with thinking off (on with `enable_thinking`)."""
        if raw or CHATML_MARKER in prompt:
            return self.encode(prompt)
        return self.encode(self.render_chat([{"role": "user", "content": prompt}], enable_thinking=enable_thinking))
