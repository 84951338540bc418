"""`qwen3-api chat`: an interactive terminal chat with a running server, over its OpenAI API (streamed)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx


class ChatSession:
    """Keeps the conversation and streams each answer from /v1/chat/completions."""

    def __init__(self, url: str, system: str | None, thinking: bool | None, max_tokens: int, timeout: float = 600):
        self.url = url.rstrip("/")
        self.messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        self.thinking = thinking
        self.max_tokens = max_tokens
        self.client = httpx.Client(timeout=timeout, trust_env=False)
        self.model = self.client.get(f"{self.url}/v1/models").raise_for_status().json()["data"][0]["id"]

    def ask(self, text: str) -> Iterator[tuple[str, str]]:
        """Send a user turn; yield ("reasoning" | "content", text) pieces as they stream in."""
        self.messages.append({"role": "user", "content": text})
        body: dict[str, Any] = {"model": self.model, "messages": self.messages, "stream": True,
                                "max_tokens": self.max_tokens}  # fmt: skip
        if self.thinking is not None:
            body["enable_thinking"] = self.thinking
        answer: list[str] = []
        with self.client.stream("POST", f"{self.url}/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                self.messages.pop()
                raise RuntimeError(f"HTTP {response.status_code}: {response.text}")
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[len("data: ") :])
                if "error" in event:
                    raise RuntimeError(event["error"].get("message", str(event["error"])))
                for choice in event.get("choices", []):
                    delta = choice.get("delta", {})
                    if delta.get("reasoning_content"):
                        yield "reasoning", delta["reasoning_content"]
                    if delta.get("content"):
                        answer.append(delta["content"])
                        yield "content", delta["content"]
        self.messages.append({"role": "assistant", "content": "".join(answer)})

    def reset(self) -> None:
        self.messages = [m for m in self.messages if m["role"] == "system"]
