"""Stored responses for `previous_response_id` and `GET`/`DELETE /v1/responses/{id}`: bounded, in memory, LRU.

A stored response keeps the conversation it ended (its input turns and its output as chat messages, without
`instructions`, which OpenAI does not carry over), so a follow-up request continues it. At most `capacity`
responses are kept; storing one more drops the least recently used. Nothing survives a restart.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from qwen3_api.errors import NotFoundError
from qwen3_api.server.openai.protocol import ChatMessage


@dataclass(frozen=True)
class StoredResponse:
    """A finished response object (as sent) and the chat history it leaves behind."""

    response: dict[str, Any]
    history: list[ChatMessage]


class ResponseStore:
    """The most recently used `capacity` responses by id."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, response_id: str, stored: StoredResponse) -> None:
        with self._lock:
            self._items[response_id] = stored
            self._items.move_to_end(response_id)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, response_id: str, param: str | None = None) -> StoredResponse:
        """The stored response, or NotFoundError (404) naming the id."""
        with self._lock:
            stored = self._items.get(response_id)
            if stored is None:
                raise NotFoundError(f"Response with id '{response_id}' not found.", param)
            self._items.move_to_end(response_id)
            return stored

    def delete(self, response_id: str) -> None:
        with self._lock:
            if self._items.pop(response_id, None) is None:
                raise NotFoundError(f"Response with id '{response_id}' not found.")
