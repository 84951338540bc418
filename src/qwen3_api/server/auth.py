"""API keys: with keys configured, every route but `/`, `/health`, `/live` and the playground page needs one (ASGI
middleware). The playground is static files; its API calls carry the key the user enters.

A key is accepted from `Authorization: Bearer <key>` or from `x-api-key: <key>` (the header Anthropic's clients
send). Keys are compared in constant time against every configured key, and never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence
from pathlib import Path

from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from qwen3_api.errors import AuthenticationError
from qwen3_api.server.errors import error_response

PUBLIC_PATHS = frozenset({"/", "/health", "/live"})
PUBLIC_PREFIXES = ("/playground",)  # the page, its static files and its load-status poll
INVALID_KEY = "Invalid or missing API key"


def load_api_keys(keys: Iterable[SecretStr], key_file: Path | None) -> list[bytes]:
    """The configured keys: given ones plus one per non-empty line of `key_file` (lines starting # are comments)."""
    loaded = [k.get_secret_value().strip() for k in keys]
    if key_file is not None:
        for line in key_file.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                loaded.append(line)
    return [k.encode() for k in loaded if k]


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The key a request carries: `Authorization: Bearer <key>`, else `x-api-key`."""
    api_key = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            if scheme.lower() == b"bearer" and credentials.strip():
                return credentials.strip()
        elif name == b"x-api-key" and value.strip():
            api_key = value.strip()
    return api_key


def key_is_valid(presented: bytes | None, keys: Sequence[bytes]) -> bool:
    """True if `presented` is one of `keys`; every key is compared (constant time), so timing tells nothing."""
    if presented is None:
        return False
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key)
    return matched


class APIKeyMiddleware:
    """401 for requests to non-public paths without a valid key (OpenAI's error body under /v1)."""

    def __init__(self, app: ASGIApp, keys: Sequence[bytes]) -> None:
        self.app = app
        self.keys = list(keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] in PUBLIC_PATHS
            or scope["path"].startswith(PUBLIC_PREFIXES)
            or scope["method"] == "OPTIONS"  # CORS preflights carry no credentials
            or key_is_valid(presented_key(scope["headers"]), self.keys)
        ):
            await self.app(scope, receive, send)
            return
        await error_response(AuthenticationError(INVALID_KEY), scope["path"])(scope, receive, send)
