"""Limits on what one request may ask for, shared by every API (native, OpenAI, and any other front).

Each limit is a constant here, checked by the request models' validators (so it is a 4xx naming the field) and
listed in the README's "Limits and security" table. The body size limit is a server setting
(`--max-request-bytes`), enforced before the body is parsed (`server/body_limit.py`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# The engine's own bounds (SamplingParams checks them for every API), re-exported with the others.
from qwen3_api.engine.sampling import MAX_REPETITION_PENALTY as MAX_REPETITION_PENALTY
from qwen3_api.engine.sampling import MIN_REPETITION_PENALTY as MIN_REPETITION_PENALTY

MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 512
MAX_TOOLS = 128
MAX_MESSAGES = 4096
MAX_JSON_SCHEMA_BYTES = 64 * 1024
MAX_LOGIT_BIAS_ENTRIES = 1024
MAX_SEED = 2**63 - 1
ALLOWED_CHAT_TEMPLATE_KWARGS = frozenset({"enable_thinking"})


def check_stop(value: str | list[str] | None) -> str | list[str] | None:
    """At most MAX_STOP_STRINGS stop strings, each non-empty and at most MAX_STOP_STRING_CHARS long."""
    stops = [value] if isinstance(value, str) else value or []
    if len(stops) > MAX_STOP_STRINGS:
        raise ValueError(f"at most {MAX_STOP_STRINGS} stop sequences are allowed, got {len(stops)}")
    if any(not s for s in stops):
        raise ValueError("stop sequences must not be empty")
    longest = max((len(s) for s in stops), default=0)
    if longest > MAX_STOP_STRING_CHARS:
        raise ValueError(f"each stop sequence must be at most {MAX_STOP_STRING_CHARS} characters, got {longest}")
    return value


def _canonical_token_id(key: str) -> int:
    """The token id a logit_bias key stands for; only canonical decimal integers ("5", not "05", " 5", "+5")."""
    if not key.isascii() or not key.isdigit() or (len(key) > 1 and key[0] == "0"):
        raise ValueError(f"logit_bias keys must be token ids written as canonical integers, got {key!r}")
    return int(key)


def check_logit_bias(value: dict[str, float] | None) -> dict[str, float] | None:
    """At most MAX_LOGIT_BIAS_ENTRIES entries, keys canonical non-negative integers."""
    if value is None:
        return None
    if len(value) > MAX_LOGIT_BIAS_ENTRIES:
        raise ValueError(f"at most {MAX_LOGIT_BIAS_ENTRIES} logit_bias entries are allowed, got {len(value)}")
    for key in value:
        _canonical_token_id(key)
    return value


def check_json_schema(schema: Mapping[str, Any] | None, what: str = "the JSON schema") -> None:
    """A schema's JSON text must be at most MAX_JSON_SCHEMA_BYTES."""
    if schema is None:
        return
    size = len(json.dumps(schema, separators=(",", ":")).encode())
    if size > MAX_JSON_SCHEMA_BYTES:
        raise ValueError(f"{what} must be at most {MAX_JSON_SCHEMA_BYTES} bytes as JSON, got {size}")


def check_chat_template_kwargs(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """Only the template variables in ALLOWED_CHAT_TEMPLATE_KWARGS may be set by a client."""
    for key in value or {}:
        if key not in ALLOWED_CHAT_TEMPLATE_KWARGS:
            allowed = ", ".join(sorted(ALLOWED_CHAT_TEMPLATE_KWARGS))
            raise ValueError(f"chat_template_kwargs key {key!r} is not supported (allowed: {allowed})")
    if value and "enable_thinking" in value and not isinstance(value["enable_thinking"], bool | None):
        raise ValueError("chat_template_kwargs.enable_thinking must be a boolean")
    return value


class InvalidTextError(ValueError):
    """A string in the request is not valid Unicode; `param` is where it is (e.g. "messages[0].content")."""

    def __init__(self, param: str) -> None:
        super().__init__(f"{param} holds a lone UTF-16 surrogate: text must be valid Unicode")
        self.param = param


def find_lone_surrogate(value: Any, path: str = "") -> str | None:
    """The path of the first string holding a lone UTF-16 surrogate (JSON allows "\\ud800"; UTF-8 cannot carry it)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
        return None
    if isinstance(value, Mapping):
        for key, item in value.items():
            found = find_lone_surrogate(key, path) or find_lone_surrogate(item, f"{path}.{key}" if path else str(key))
            if found:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = find_lone_surrogate(item, f"{path}[{index}]")
            if found:
                return found
    return None


def check_valid_unicode(data: Any) -> Any:
    """A `mode="before"` model validator: every string in the request must be valid Unicode."""
    where = find_lone_surrogate(data)
    if where is not None:
        raise InvalidTextError(where)
    return data
