"""The ingress never waits on a replica without bound: a silent replica stream is given up on (no Ray needed)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'qwen3-api[ray]')")

from qwen3_api.config import Settings  # noqa: E402
from qwen3_api.scaleout.ingress import REPLICA_GRACE_S, ReplicaSilentError, _next, silence_limit  # noqa: E402


class SilentStream:
    """A replica's stream that yields `items`, then goes silent (as one whose actor is unreachable)."""

    def __init__(self, *items: Any) -> None:
        self.items = list(items)

    async def __anext__(self) -> Any:
        if self.items:
            return self.items.pop(0)
        await asyncio.Event().wait()


def test_a_silent_replica_is_given_up_on_after_the_limit() -> None:
    stream = SilentStream(b"first")

    async def read() -> list[Any]:
        got = [await _next(stream, 0.2)]  # type: ignore[arg-type]
        started = time.monotonic()
        with pytest.raises(ReplicaSilentError, match="sent nothing for 0.2 s"):
            await _next(stream, 0.2)  # type: ignore[arg-type]
        got.append(time.monotonic() - started)
        return got

    first, waited = asyncio.run(read())
    assert first == b"first" and 0.15 < waited < 5


def test_the_limit_follows_the_request_timeout() -> None:
    assert silence_limit(Settings(request_timeout=60)) == 60 + REPLICA_GRACE_S
    assert silence_limit(Settings(request_timeout=0)) > 0  # "no request timeout" still bounds the wait
