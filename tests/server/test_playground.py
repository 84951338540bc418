"""The /playground page in a real headless Chromium against the real server: streaming, stop, thinking, errors."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests

from tests.conftest import REPO_ROOT, ServerPool, ServerProcess, start_server, stop_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = REPO_ROOT / "test-artifacts"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="no Chromium installed (apt-get install chromium chromium-driver)"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield chromium
        chromium.close()


@dataclass
class Playground:
    """One browser tab on /playground, recording console errors and the chat request bodies it sends."""

    page: Any
    console_errors: list[str] = field(default_factory=list)
    chat_requests: list[dict[str, Any]] = field(default_factory=list)
    chat_headers: list[dict[str, str]] = field(default_factory=list)

    def open(self, url: str) -> None:
        self.page.goto(f"{url}/playground")
        self.page.wait_for_selector("#server-status[data-state=ready]", timeout=180_000)

    def set(self, field_id: str, value: str) -> None:
        self.page.fill(f"#{field_id}", value)

    def send(self, text: str) -> None:
        self.page.fill("#prompt", text)
        self.page.press("#prompt", "Enter")

    def wait_done(self, timeout: float = 120_000) -> None:
        self.page.wait_for_selector("#send:not([disabled])", timeout=timeout)

    def last(self, selector: str) -> str:
        return str(self.page.eval_on_selector(
            "#conversation", f"c => {{ const b = c.querySelectorAll('.message.assistant'); const n = b.length && "
            f"b[b.length - 1].querySelector({json.dumps(selector)}); return n ? n.textContent : null; }}"
        ))  # fmt: skip

    def stat(self, name: str) -> str:
        return str(self.page.text_content(f"#stat-{name}"))

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def playground(browser: Any) -> Iterator[Playground]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    tab = Playground(context.new_page())

    def on_request(request: Any) -> None:
        if request.url.endswith("/v1/chat/completions"):
            tab.chat_requests.append(json.loads(request.post_data))
            tab.chat_headers.append(request.headers)

    tab.page.on("console", lambda message: tab.console_errors.append(message.text) if message.type == "error" else None)
    tab.page.on("pageerror", lambda error: tab.console_errors.append(str(error)))
    tab.page.on("request", on_request)
    yield tab
    context.close()


@pytest.fixture(scope="module")
def thinking_server(opened_think_model_dir: Path, server_pool: ServerPool) -> ServerProcess:
    """The tiny model whose template opens `<think>`: with thinking on, its streamed output is reasoning."""
    return server_pool.get(str(opened_think_model_dir), "--backend", "torch")


# Random weights: sampling from the whole vocabulary gives varied, visible text (greedy output is newlines).
def varied_sampling(tab: Playground, max_tokens: int) -> None:
    tab.set("temperature", "1")
    tab.set("top-k", "0")
    tab.set("max-tokens", str(max_tokens))


# `make demo` serves test:tiny; QWEN3_API_PLAYGROUND_MODEL=test:0.6b measures a bigger model the same way.
DEMO_MODEL = os.environ.get("QWEN3_API_PLAYGROUND_MODEL", "test:tiny")


def test_fresh_demo_server_streams_a_first_answer(playground: Playground, tmp_path: Path) -> None:
    started = time.monotonic()
    server = start_server(DEMO_MODEL, tmp_path / "demo.log", wait_healthy=False)
    try:
        while True:  # the page is served at once; the model loads behind it
            try:
                requests.get(server.url, timeout=2)
                break
            except requests.RequestException:  # not listening yet, or too busy loading to answer in time
                assert server.process.poll() is None, server.log()
                assert time.monotonic() - started < 120, "server never listened"
                time.sleep(0.1)
        playground.open(server.url)
        playground.set("max-tokens", "48")
        playground.send("Hello! Who are you?")
        playground.page.wait_for_function(
            "() => [...document.querySelectorAll('.message.assistant .content, .message.assistant .reasoning')]"
            ".some(n => n.textContent.length > 0)",
            timeout=120_000,
        )
        first_answer_s = time.monotonic() - started
        playground.wait_done()
        ARTIFACTS.mkdir(exist_ok=True)
        name = DEMO_MODEL.replace(":", "-")
        (ARTIFACTS / f"playground-first-answer-{name}.txt").write_text(
            f"serve --model {DEMO_MODEL} start to first streamed text in the playground: {first_answer_s:.1f} s\n"
        )
        print(f"first streamed answer {first_answer_s:.1f} s after `serve --model {DEMO_MODEL}` started")
        shot = playground.screenshot("playground-first-answer.png")
        assert shot.stat().st_size > 10_000
        # the footer shows the last answer's usage and speed
        assert int(playground.stat("prompt")) > 5
        assert int(playground.stat("completion")) > 0
        assert playground.stat("ttft").endswith(" ms")
        assert float(playground.stat("tps")) > 0
        # the request asked for usage in the stream; `/` keeps its JSON contract
        assert playground.chat_requests[0]["stream_options"] == {"include_usage": True}
        assert set(requests.get(server.url, timeout=5).json()) == {"name", "version", "status", "model"}
        assert playground.console_errors == []
    finally:
        stop_server(server)


def test_thinking_streams_in_a_block_and_stop_aborts(playground: Playground, thinking_server: ServerProcess) -> None:
    playground.open(thinking_server.url)
    varied_sampling(playground, max_tokens=1900)
    playground.send("Think about a long story.")
    # reasoning appears in an open thinking block while it streams
    playground.page.wait_for_function(
        "() => { const r = document.querySelector('.message.assistant details.thinking[open] .reasoning');"
        " return r && r.textContent.length > 40; }",
        timeout=120_000,
    )
    playground.page.click("#stop")
    playground.page.wait_for_selector(".message.assistant .note:text('stopped')", timeout=10_000)
    stopped_at = playground.last(".reasoning")
    time.sleep(1.0)
    assert playground.last(".reasoning") == stopped_at  # nothing arrives after stop
    assert 40 < len(stopped_at) < 1900 * 20
    assert playground.stat("finish") == "stopped"
    assert playground.page.is_enabled("#send")
    assert playground.chat_requests[-1]["enable_thinking"] is True
    playground.screenshot("playground-stopped-thinking.png")

    # thinking off: the same server answers in plain content, no thinking block
    playground.page.click("#clear")
    playground.page.uncheck("#thinking")
    varied_sampling(playground, max_tokens=16)
    playground.send("Answer directly.")
    playground.wait_done()
    assert playground.chat_requests[-1]["enable_thinking"] is False
    assert playground.last("details.thinking") == "None"
    assert playground.last(".content")
    assert playground.stat("finish") in ("length", "stop")
    assert playground.console_errors == []


def test_parameters_seed_and_api_key_reach_the_server(playground: Playground, thinking_server: ServerProcess) -> None:
    playground.open(thinking_server.url)
    playground.set("api-key", "sk-playground-test")
    playground.page.dispatch_event("#api-key", "change")
    playground.page.uncheck("#thinking")
    playground.set("system-prompt", "You are terse.")
    playground.set("temperature", "1.3")
    playground.set("top-p", "0.9")
    playground.set("top-k", "50")
    playground.set("max-tokens", "12")
    playground.set("seed", "7")
    answers = []
    for _ in range(2):
        playground.page.click("#clear")
        playground.send("Same question twice.")
        playground.wait_done()
        answers.append(playground.last(".content"))
    body = playground.chat_requests[-1]
    assert (body["temperature"], body["top_p"], body["top_k"], body["max_tokens"], body["seed"]) == (1.3, 0.9, 50, 12, 7)
    assert body["messages"] == [{"role": "system", "content": "You are terse."},
                                {"role": "user", "content": "Same question twice."}]  # fmt: skip
    assert answers[0] and answers[0] == answers[1]  # the seed is used
    assert playground.chat_headers[-1]["authorization"] == "Bearer sk-playground-test"
    # the key survives a reload (localStorage)
    playground.page.reload()
    assert playground.page.input_value("#api-key") == "sk-playground-test"
    assert playground.console_errors == []


def shorten_strings(tab: Playground, box_id: str) -> None:
    """Cap the example's string lengths (random weights write long strings) by editing its box, as a user would."""
    text = tab.page.input_value(f"#{box_id}").replace('"maxLength": 40', '"maxLength": 8')
    tab.page.fill(f"#{box_id}", text)


def test_json_and_tool_examples(playground: Playground, thinking_server: ServerProcess) -> None:
    playground.open(thinking_server.url)
    playground.page.click("#example-json")
    assert not playground.page.is_checked("#thinking")  # the server refuses thinking with a JSON schema
    shorten_strings(playground, "json-schema")
    playground.set("max-tokens", "400")  # a \uXXXX escape is one character but six tokens
    playground.page.press("#prompt", "Enter")
    playground.wait_done()
    schema = json.loads(playground.page.input_value("#json-schema"))["schema"]
    assert schema["properties"]["name"]["maxLength"] == 8
    jsonschema.validate(json.loads(playground.last(".content")), schema)
    assert playground.stat("finish") == "stop"

    playground.page.click("#example-tool")
    playground.page.select_option("#tool-choice", "required")
    shorten_strings(playground, "tools")
    playground.set("max-tokens", "600")  # room for the first call even when every character is an escape
    playground.set("seed", "7")  # random weights: a fixed draw, so the call's strings are the same every run
    playground.page.press("#prompt", "Enter")
    playground.wait_done()
    assert playground.chat_requests[-1]["tool_choice"] == "required"
    # random weights may go on with parallel calls until max tokens; the first call is whole either way
    assert playground.stat("finish") in ("tool_calls", "length")
    first_call = playground.last(".tool-calls").split("\n")[0]  # one line per call
    assert first_call.startswith("get_weather(") and first_call.endswith(")")
    assert "city" in json.loads(first_call[len("get_weather(") : -1])
    playground.screenshot("playground-tool-call.png")
    assert playground.console_errors == []


def test_server_errors_are_shown_in_the_page(playground: Playground, thinking_server: ServerProcess) -> None:
    playground.open(thinking_server.url)
    playground.set("max-tokens", "0")
    playground.send("This request is invalid.")
    error = playground.page.wait_for_selector(".message.error", timeout=30_000)
    text = error.text_content()
    assert "HTTP 400" in text and "max_tokens" in text
    # the browser logs the failed fetch itself; nothing else went wrong
    assert all("status of 400" in e for e in playground.console_errors), playground.console_errors
    # a valid request afterwards works (the failed turn is not kept in the conversation)
    playground.set("max-tokens", "4")
    playground.send("Now a valid one.")
    playground.wait_done()
    assert playground.chat_requests[-1]["messages"][-1]["content"] == "Now a valid one."
    assert len(playground.chat_requests[-1]["messages"]) == 1
