"""Example client for the Qwen3-4B API: health check, a generation, and a ChatML chat.

    python src/api_examples.py [--prompt TEXT] [--max-length N] [--temperature T] [--top-p P] [--top-k K]
                               [--num-sequences N] [--url http://host:2025]

Needs only `requests`. Prints results readably and a one-line message (no traceback) when the server is
unreachable or answers with an error.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import requests

DEFAULT_URL = "http://localhost:2025"


class ApiError(Exception):
    """The server could not be reached or answered with an error."""


def call(method: str, url: str, payload: dict[str, Any] | None = None, timeout: float = 600) -> dict[str, Any]:
    """One HTTP call; returns the JSON body or raises ApiError with a readable message."""
    try:
        response = requests.request(method, url, json=payload, timeout=timeout)
    except requests.ConnectionError:
        raise ApiError(f"cannot reach the server at {url} (is `qwen3-api serve` running?)") from None
    except requests.Timeout:
        raise ApiError(f"the server at {url} did not answer within {timeout:.0f} s") from None
    try:
        body: dict[str, Any] = response.json()
    except ValueError:
        body = {"detail": response.text}
    if response.status_code >= 400:
        raise ApiError(f"{method} {url} failed with HTTP {response.status_code}: {body.get('detail', body)}")
    return body


def generate(base_url: str, prompt: str, **params: Any) -> dict[str, Any]:
    """POST /generate with the given prompt and parameters."""
    return call("POST", f"{base_url}/generate", {"prompt": prompt, **params})


def chatml(messages: list[dict[str, str]]) -> str:
    """Build a ChatML prompt (used verbatim by the server) that ends with an open assistant turn."""
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def print_result(title: str, result: dict[str, Any]) -> None:
    print(f"\n=== {title} ===")
    for key, value in result["parameters"].items():
        if key != "prompt":
            print(f"  {key}: {value}")
    for i, text in enumerate(result["generated_texts"], start=1):
        print(f"--- sequence {i} ---\n{text}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Examples for the Qwen3-4B API")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"server base URL (default {DEFAULT_URL})")
    parser.add_argument("--prompt", default="Write a Python function that checks whether a number is prime.")
    parser.add_argument("--max-length", type=int, default=256, help="maximum number of generated tokens")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--num-sequences", type=int, default=1)
    parser.add_argument("--skip-chat", action="store_true", help="skip the ChatML chat example")
    args = parser.parse_args(argv)
    base = args.url.rstrip("/")
    params = {
        "max_length": args.max_length,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "num_return_sequences": args.num_sequences,
    }
    try:
        info = call("GET", f"{base}/", timeout=10)
        print(f"{info['name']} {info['version']} ({info['status']}), model {info['model']}")
        print(f"health: {call('GET', f'{base}/health', timeout=10)['status']}")
        print_result("generate", generate(base, args.prompt, **params))
        if not args.skip_chat:
            prompt = chatml(
                [
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "What is the capital of France?"},
                ]
            )
            print_result("chat (ChatML)", generate(base, prompt, **params))
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
