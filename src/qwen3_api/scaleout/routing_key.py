"""The routing key of a request: chain hashes of fixed-size blocks of its prompt, as the engine hashes KV blocks.

The ingress does not tokenize: it hashes the prompt's *text* (the messages of a chat in order, each as its role
and content) in blocks of `ROUTING_BLOCK_CHARS` characters with the engine's own chain hash (`hash_block`), as
Ray Serve's prefix-affinity router and SGLang's router match on text. A prompt that starts with another's text
starts with the same tokens once templated and tokenized, so a shared run of text blocks stands for shared KV
blocks on the replica that computed them; the next turn of a chat, whose messages begin with the previous
turn's, matches that turn's blocks. The last, partial block is hashed too, so identical prompts share every hash.
"""

from __future__ import annotations

import json
from typing import Any

from qwen3_api.engine.kv_cache import hash_block
from qwen3_api.scaleout.routing import BlockHash

ROUTING_BLOCK_CHARS = 16  # finer than a KV block (~64 characters): short turns still match
MAX_ROUTING_CHARS = 256 * 1024  # prompts longer than this are keyed by their first 256 Ki characters


def prompt_text(path: str, body: dict[str, Any]) -> str:
    """The text a request's prompt is made of, in the order the model sees it; "" when it has none."""
    if path in ("/generate", "/v1/completions"):
        prompt = body.get("prompt", "")
        return prompt if isinstance(prompt, str) else _canonical(prompt)
    parts: list[str] = []
    for name in ("tools", "system", "instructions"):
        if name in body:
            parts.append(f"<{name}>{_canonical(body[name])}")
    messages = body.get("messages", body.get("input", []))
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                role = message.get("role", message.get("type", ""))
                content = message.get("content", message.get("output", ""))
                parts.append(f"<{role}>{_content_text(content)}")
                if "tool_calls" in message:
                    parts.append(_canonical(message["tool_calls"]))
            else:
                parts.append(_canonical(message))
    return "".join(parts)


def block_hashes(text: str, block_chars: int = ROUTING_BLOCK_CHARS) -> tuple[BlockHash, ...]:
    """Chain hashes of `text` in blocks of `block_chars` characters (code points), the last block partial."""
    text = text[:MAX_ROUTING_CHARS]
    hashes: list[BlockHash] = []
    parent: BlockHash | None = None
    for start in range(0, len(text), block_chars):
        parent = hash_block(parent, [ord(char) for char in text[start : start + block_chars]])
        hashes.append(parent)
    return tuple(hashes)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # text parts / content blocks: their text, else their JSON
        return "".join(
            part["text"] if isinstance(part, dict) and isinstance(part.get("text"), str) else _canonical(part)
            for part in content
        )
    return _canonical(content)


def _canonical(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
