"""A chat conversation streamed from our chat-completions API, over HTTP or in-process on a loaded engine.

Both transports yield the same server-sent event payloads (`chat.completion.chunk` objects), so the session and
the terminal UI cannot tell a running server from an engine loaded by `qwen3-api run`.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx

if TYPE_CHECKING:
    from qwen3_api.config import Settings
    from qwen3_api.engine.async_engine import AsyncEngine


class ChatError(RuntimeError):
    """The server (or engine) refused or failed a turn; the message is shown to the user."""


class Transport(Protocol):
    """Sends one chat-completions request body; yields the stream's event payloads."""

    model: str

    def stream(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]: ...

    def close(self) -> None: ...


def parse_sse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The JSON payloads of `data:` lines, up to `[DONE]`; an error event raises ChatError."""
    for line in lines:
        if not line.startswith("data: "):
            continue
        data = line[len("data: ") :].strip()
        if data == "[DONE]":
            return
        event = json.loads(data)
        if "error" in event:
            error = event["error"]
            raise ChatError(error.get("message", str(error)) if isinstance(error, dict) else str(error))
        yield event


def error_text(status: int, body: str) -> str:
    try:
        error = json.loads(body).get("error") or json.loads(body).get("detail") or body
    except (ValueError, AttributeError):
        error = body
    message = error.get("message", error) if isinstance(error, dict) else error
    return f"HTTP {status}: {message}"


class HttpTransport:
    """A running server's /v1/chat/completions."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 600) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout, trust_env=False, headers=headers)
        models = self.client.get(f"{self.url}/v1/models")
        if models.status_code != 200:
            raise ChatError(error_text(models.status_code, models.text))
        self.model: str = models.json()["data"][0]["id"]

    def stream(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        with self.client.stream("POST", f"{self.url}/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                raise ChatError(error_text(response.status_code, response.text))
            yield from parse_sse(response.iter_lines())

    def close(self) -> None:
        self.client.close()


_END = object()


class InProcessTransport:
    """The same chat serving code as the server, on an engine loaded in this process (no HTTP, no port)."""

    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.model = engine.model_name
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="chat-loop", daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result()

    async def _start(self) -> None:
        self.engine.start(asyncio.get_running_loop())

    def stream(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        from qwen3_api.errors import Qwen3APIError
        from qwen3_api.server.cached_generation import Generation
        from qwen3_api.server.openai.protocol import ChatCompletionRequest
        from qwen3_api.server.openai.serving_chat import ChatServing

        serving = ChatServing(self.engine, self.settings)
        try:
            request = ChatCompletionRequest.model_validate(body)
            prepared = serving.prepare(request)
        except (Qwen3APIError, ValueError) as exc:
            raise ChatError(str(exc)) from exc
        pieces: queue.Queue[Any] = queue.Queue()

        async def pump(events: AsyncIterator[str]) -> None:
            try:
                async for event in events:
                    pieces.put(event)
            finally:
                aclose = getattr(events, "aclose", None)  # an async generator: closing it early aborts the request
                if aclose is not None:
                    await aclose()
                pieces.put(_END)

        generation = Generation(self.engine, prepared.jobs, "bypass")  # one person's chat: no response cache
        future = asyncio.run_coroutine_threadsafe(pump(serving.stream(request, prepared, generation)), self.loop)

        def lines() -> Iterator[str]:
            while (item := pieces.get()) is not _END:
                yield from item.splitlines()

        try:
            yield from parse_sse(lines())
        finally:
            future.cancel()  # Ctrl-C or an abandoned stream: stop generating now

    def close(self) -> None:
        self.engine.shutdown()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@dataclass
class TurnStats:
    """What one answer cost: tokens and speed, as the footer and the terminal show them."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_s: float | None = None
    tokens_per_second: float | None = None
    finish_reason: str | None = None


class ChatSession:
    """Keeps the conversation and streams each answer as ("reasoning" | "content", text) pieces."""

    def __init__(self, transport: Transport, system: str | None, thinking: bool | None, max_tokens: int) -> None:
        self.transport = transport
        self.system = system
        self.thinking = thinking
        self.max_tokens = max_tokens
        self.messages: list[dict[str, Any]] = []
        self.last = TurnStats()

    @property
    def model(self) -> str:
        return self.transport.model

    def request_body(self) -> dict[str, Any]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        body: dict[str, Any] = {"model": self.model, "messages": system + self.messages, "stream": True,
                                "stream_options": {"include_usage": True}, "max_tokens": self.max_tokens}  # fmt: skip
        if self.thinking is not None:
            body["enable_thinking"] = self.thinking
        return body

    def ask(self, text: str) -> Generator[tuple[str, str], None, None]:
        """Send a user turn and stream the answer; an interrupted answer is kept as far as it got."""
        self.messages.append({"role": "user", "content": text})
        stats = self.last = TurnStats()
        started = time.monotonic()
        first: float | None = None
        last = started
        pieces = 0
        answer: list[str] = []
        try:
            for event in self.transport.stream(self.request_body()):
                if event.get("usage"):
                    stats.prompt_tokens = event["usage"]["prompt_tokens"]
                    stats.completion_tokens = event["usage"]["completion_tokens"]
                for choice in event.get("choices", []):
                    delta = choice.get("delta", {})
                    stats.finish_reason = choice.get("finish_reason") or stats.finish_reason
                    for kind in ("reasoning_content", "content"):
                        if delta.get(kind):
                            last = time.monotonic()
                            first = first if first is not None else last
                            pieces += 1
                            if kind == "content":
                                answer.append(delta[kind])
                            yield ("reasoning" if kind == "reasoning_content" else "content"), delta[kind]
        except ChatError:
            self.messages.pop()
            raise
        except BaseException:  # KeyboardInterrupt: keep what was said so far
            stats.finish_reason = "interrupted"
            self.messages.append({"role": "assistant", "content": "".join(answer)})
            raise
        finally:
            if first is not None:
                stats.ttft_s = first - started
                tokens = stats.completion_tokens or pieces
                if tokens > 1 and last > first:
                    stats.tokens_per_second = (tokens - 1) / (last - first)
        self.messages.append({"role": "assistant", "content": "".join(answer)})

    def clear(self) -> None:
        self.messages = []

    def save(self, path: Path) -> int:
        """Write the conversation (system prompt first) as JSON; returns the number of messages."""
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + self.messages
        path.write_text(json.dumps({"model": self.model, "messages": messages}, indent=2, ensure_ascii=False) + "\n")
        return len(messages)

    def close(self) -> None:
        self.transport.close()
