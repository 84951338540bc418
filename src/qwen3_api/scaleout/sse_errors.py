"""The error that ends a stream cut short by a replica's death, in the shape of the API the stream belongs to."""

from __future__ import annotations

import json

from qwen3_api.errors import ReplicaFailedError
from qwen3_api.server.errors import anthropic_error_body, openai_error_body


def stream_error_event(path: str, exc: ReplicaFailedError) -> bytes:
    """The closing error event(s), as the single-process server writes them when a stream fails mid-way."""
    if path.startswith("/v1/messages"):
        return f"event: error\ndata: {json.dumps(anthropic_error_body(exc))}\n\n".encode()
    payload = openai_error_body(exc) if path.startswith("/v1") else {"error": str(exc)}
    return f"data: {json.dumps(payload)}\n\ndata: [DONE]\n\n".encode()
