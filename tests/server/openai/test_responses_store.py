"""The bounded store behind previous_response_id: least recently used responses go first."""

from __future__ import annotations

import pytest

from qwen3_api.errors import NotFoundError
from qwen3_api.server.openai.responses_store import ResponseStore, StoredResponse


def stored(name: str) -> StoredResponse:
    return StoredResponse({"id": name}, [])


def test_capacity_drops_the_least_recently_used() -> None:
    store = ResponseStore(2)
    store.put("a", stored("a"))
    store.put("b", stored("b"))
    store.get("a")  # a is now the most recently used
    store.put("c", stored("c"))
    assert len(store) == 2 and store.get("a").response == {"id": "a"} and store.get("c").response == {"id": "c"}
    with pytest.raises(NotFoundError, match="'b' not found"):
        store.get("b")


def test_zero_capacity_keeps_nothing_and_delete_of_unknown_is_not_found() -> None:
    store = ResponseStore(0)
    store.put("a", stored("a"))
    assert len(store) == 0
    with pytest.raises(NotFoundError):
        store.delete("a")
