"""An async load generator: N streamed requests at a fixed concurrency against any supported API.

`C` workers each send requests back to back until `N` have been sent, like vLLM's `--max-concurrency`. Each
request gets its own seeded random prompt so that prefix caching cannot skip prefill. One warm-up request,
excluded from the results, also finds out which request style the server accepts (see `apis`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from qwen3_api.bench.apis import Api, ApiKind, RequestStyle, make_api
from qwen3_api.bench.metrics import BenchResult, RequestOutput, summarize
from qwen3_api.bench.prompts import PromptBuilder

logger = logging.getLogger(__name__)

REJECTED_STATUSES = (400, 404, 405, 415, 422)
WARMUP_SEED = 999_999_937


class RequestRejected(Exception):
    """The server answered a request style with a client error: try the next style."""


class NoAcceptedStyle(Exception):
    """The server rejected every request style, or failed the warm-up request."""


@dataclass(frozen=True)
class LoadConfig:
    """One load-generator run."""

    url: str
    api: ApiKind = ApiKind.OPENAI_COMPLETIONS
    model: str | None = None
    num_requests: int = 16
    concurrency: int = 1
    prompt_tokens: int = 64
    output_tokens: int = 64
    ignore_eos: bool = True
    tokenizer_dir: Path | None = None
    seed: int = 0
    timeout_s: float = 1800.0
    warmup: bool = True

    def __post_init__(self) -> None:
        if self.num_requests < 1 or self.concurrency < 1:
            raise ValueError("num_requests and concurrency must be at least 1")
        if self.prompt_tokens < 1 or self.output_tokens < 1:
            raise ValueError("prompt_tokens and output_tokens must be at least 1")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")


def request_seed(seed: int, index: int) -> int:
    """The prompt seed of request `index` of a run seeded with `seed`."""
    return seed * 1_000_003 + index + 1


class LoadGenerator:
    """An HTTP client for one server and API, holding the request style the server accepted."""

    def __init__(
        self,
        url: str,
        api: Api,
        *,
        ignore_eos: bool = True,
        timeout_s: float = 1800.0,
        max_connections: int = 64,
        count_tokens: PromptBuilder | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.api = api
        self.ignore_eos = ignore_eos
        self.notes: list[str] = []
        self.style: RequestStyle | None = None
        self._builder = count_tokens
        self._client = httpx.AsyncClient(
            base_url=self.url,
            timeout=httpx.Timeout(timeout_s, connect=30.0),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            trust_env=False,  # never send benchmark traffic for localhost through a proxy from the environment
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._client.aclose()

    async def prepare(self, warmup_prompt: str, max_tokens: int) -> RequestOutput:
        """Send a warm-up request in each candidate style until one is accepted; keep that style."""
        rejections = []
        for style in self.api.styles(self.ignore_eos):
            try:
                output = await self._send(warmup_prompt, max_tokens, style, raise_on_rejection=True)
            except RequestRejected as exc:
                rejections.append(f"{style.description}: {exc}")
                continue
            if not output.success:
                raise NoAcceptedStyle(f"warm-up request failed: {output.error}")
            self.style = style
            if rejections:
                self.notes.append("server rejected " + "; ".join(rejections) + f"; using {style.description}")
            if self.ignore_eos and not style.ignores_eos:
                self.notes.append("end tokens NOT ignored (server has no way to): outputs may stop early")
            if not style.stream or not output.streamed:
                self.notes.append("no streaming: TTFT = e2e latency, TPOT and ITL not measured")
            return output
        raise NoAcceptedStyle("server rejected every request style: " + " | ".join(rejections))

    async def send(self, prompt: str, max_tokens: int) -> RequestOutput:
        """Send one request in the accepted style (call `prepare` first)."""
        if self.style is None:
            raise RuntimeError("call prepare() before send()")
        return await self._send(prompt, max_tokens, self.style, raise_on_rejection=False)

    async def run(
        self, prompts: Sequence[str], max_tokens: int, concurrency: int
    ) -> tuple[list[RequestOutput], float]:
        """Send every prompt with `concurrency` workers sending back to back; return outputs and wall time."""
        outputs: list[RequestOutput] = [RequestOutput() for _ in prompts]
        indices = iter(range(len(prompts)))

        async def worker() -> None:
            for i in indices:  # shared iterator: each index goes to exactly one worker
                outputs[i] = await self.send(prompts[i], max_tokens)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(prompts)))))
        return outputs, time.perf_counter() - started

    async def _send(
        self, prompt: str, max_tokens: int, style: RequestStyle, raise_on_rejection: bool
    ) -> RequestOutput:
        body = self.api.body(prompt, max_tokens, style)
        output = RequestOutput(streamed=style.stream)
        started = time.perf_counter()
        try:
            async with self._client.stream("POST", self.api.path, json=body) as response:
                if response.status_code >= 400:
                    detail = (await response.aread()).decode(errors="replace")[:300]
                    if raise_on_rejection and response.status_code in REJECTED_STATUSES:
                        raise RequestRejected(f"HTTP {response.status_code} {detail}")
                    output.error = f"HTTP {response.status_code}: {detail}"
                    return output
                if "text/event-stream" in response.headers.get("content-type", ""):
                    await self._read_stream(response, output, started)
                else:  # a server that ignored `stream`, or the non-streaming style
                    data = json.loads(await response.aread())
                    self._read_full(data, output, max_tokens)
                    output.e2e = output.ttft = time.perf_counter() - started
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            output.error = f"{type(exc).__name__}: {exc}"
            output.success = False
        return output

    async def _read_stream(self, response: httpx.Response, output: RequestOutput, started: float) -> None:
        events = 0
        last = started
        completion_tokens = None
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            event = self.api.parse_event(json.loads(payload))
            now = time.perf_counter()
            if event.error:
                output.error = f"stream error: {event.error}"
                return
            if event.text:
                if events == 0:
                    output.ttft = now - started
                else:
                    output.itl.append(now - last)
                last = now
                events += 1
                output.text += event.text
            if event.completion_tokens is not None:
                completion_tokens = event.completion_tokens
            if event.prompt_tokens is not None:
                output.prompt_tokens = event.prompt_tokens
        output.e2e = time.perf_counter() - started
        output.text_events = events
        if events == 0:
            output.ttft = output.e2e
        if completion_tokens is not None:
            output.output_tokens, output.output_tokens_source = completion_tokens, "usage"
        else:
            output.output_tokens, output.output_tokens_source = events, "stream events"
        output.success = True

    def _read_full(self, data: dict[str, Any], output: RequestOutput, max_tokens: int) -> None:
        full = self.api.parse_full(data)
        output.streamed = False
        output.text = full.text
        output.prompt_tokens = full.prompt_tokens
        counted = self._builder.count_tokens(full.text) if self._builder is not None else None
        if full.completion_tokens is not None:
            output.output_tokens, output.output_tokens_source = full.completion_tokens, "usage"
        elif (
            counted is not None
        ):  # close to the generated count (random-weight text may not round-trip exactly)
            output.output_tokens, output.output_tokens_source = counted, "re-tokenized text"
        else:
            output.output_tokens, output.output_tokens_source = max_tokens, "assumed max_tokens"
        output.success = True


async def run_load(
    config: LoadConfig, builder: PromptBuilder | None = None, after_warmup: Callable[[], object] | None = None
) -> BenchResult:
    """Run `config` against its server and summarize the timed requests (the warm-up excluded). `after_warmup` is
    called between the warm-up and the timed requests (e.g. to read the server's counters)."""
    builder = builder or PromptBuilder.from_tokenizer_dir(config.tokenizer_dir)
    api = make_api(config.api, config.model)
    prompts = [
        builder.prompt(config.prompt_tokens, request_seed(config.seed, i)) for i in range(config.num_requests)
    ]
    async with LoadGenerator(
        config.url,
        api,
        ignore_eos=config.ignore_eos,
        timeout_s=config.timeout_s,
        max_connections=config.concurrency + 2,
        count_tokens=builder,
    ) as generator:
        warmup_prompt = builder.prompt(config.prompt_tokens, WARMUP_SEED + config.seed)
        await generator.prepare(warmup_prompt, min(config.output_tokens, 4) if config.warmup else 1)
        if after_warmup is not None:
            after_warmup()
        outputs, duration = await generator.run(prompts, config.output_tokens, config.concurrency)
        notes = list(generator.notes)
    if not builder.exact:
        notes.append("no tokenizer given: prompt lengths are approximate")
    for o in outputs:
        if o.success and o.prompt_tokens is None and builder.exact and api.kind is ApiKind.NATIVE:
            o.prompt_tokens = config.prompt_tokens  # raw prompts are used verbatim, so the count is exact
    silent = [o for o in outputs if o.success and o.streamed and o.text_events == 0]
    if silent:
        notes.append(f"{len(silent)} stream(s) carried no text: their TTFT = e2e and they have no TPOT")
    short = [o for o in outputs if o.success and o.output_tokens < config.output_tokens]
    if short:
        notes.append(f"{len(short)} request(s) produced fewer than {config.output_tokens} output tokens")
    return summarize(
        outputs,
        duration,
        api=ApiKind(config.api).value,
        url=config.url,
        model=config.model,
        concurrency=config.concurrency,
        prompt_tokens_target=config.prompt_tokens,
        output_tokens_target=config.output_tokens,
        notes=notes,
    )


def run_benchmark(config: LoadConfig, builder: PromptBuilder | None = None) -> BenchResult:
    """Blocking wrapper of `run_load`."""
    return asyncio.run(run_load(config, builder))
