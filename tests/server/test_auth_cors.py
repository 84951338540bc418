"""API keys and CORS on the real server: keys from the flag, the environment and a file; 401 in each API's shape."""

from __future__ import annotations

import pytest
import requests

from qwen3_api.config import Settings
from tests.conftest import ServerProcess
from tests.server.conftest import ENV_KEY, FILE_KEY, FLAG_KEY, ORIGIN


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("headers", [{}, bearer("wrong"), {"Authorization": FLAG_KEY}, {"x-api-key": "wrong"}])
def test_missing_or_wrong_key_is_401_in_each_api_shape(hardened: ServerProcess, headers: dict[str, str]) -> None:
    native = requests.post(f"{hardened.url}/generate", json={"prompt": "hi"}, headers=headers, timeout=30)
    assert native.status_code == 401
    assert native.json() == {"detail": "Invalid or missing API key"}
    assert native.headers["WWW-Authenticate"] == "Bearer"
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions")):
        response = requests.request(method, f"{hardened.url}{path}", json={}, headers=headers, timeout=30)
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["code"] == "invalid_api_key" and error["message"] == "Invalid or missing API key"
    for path in ("/metrics", "/openapi.json", "/tokenize"):
        assert requests.get(f"{hardened.url}{path}", headers=headers, timeout=30).status_code == 401


@pytest.mark.parametrize("key", [FLAG_KEY, FILE_KEY])
def test_each_configured_key_is_accepted(hardened: ServerProcess, key: str) -> None:
    response = requests.post(
        f"{hardened.url}/generate", json={"prompt": "hi", "max_length": 2}, headers=bearer(key), timeout=60
    )
    assert response.status_code == 200, response.text
    assert requests.get(f"{hardened.url}/v1/models", headers={"x-api-key": key}, timeout=30).status_code == 200


def test_flag_keys_override_environment_keys(hardened: ServerProcess) -> None:
    """Like every setting, --api-key given on the command line replaces QWEN3_API_API_KEYS (the file adds to both)."""
    response = requests.get(f"{hardened.url}/v1/models", headers=bearer(ENV_KEY), timeout=30)
    assert response.status_code == 401


def test_environment_keys_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWEN3_API_API_KEYS", f" {ENV_KEY},second ,")
    keys = Settings().api_keys
    assert [k.get_secret_value() for k in keys] == [ENV_KEY, "second"]


def test_public_routes_need_no_key(hardened: ServerProcess) -> None:
    assert requests.get(f"{hardened.url}/", timeout=30).status_code == 200
    assert requests.get(f"{hardened.url}/health", timeout=30).status_code == 200
    assert requests.get(f"{hardened.url}/live", timeout=30).status_code != 401
    # The playground page is static; its API calls carry the key the user types into it.
    assert requests.get(f"{hardened.url}/playground", timeout=30).status_code == 200
    assert requests.get(f"{hardened.url}/playground/status", timeout=30).status_code == 200


def test_anthropic_route_answers_401_in_anthropic_shape_and_takes_x_api_key(hardened: ServerProcess) -> None:
    body = {"model": hardened.model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    refused = requests.post(f"{hardened.url}/v1/messages", json=body, timeout=30)
    assert refused.status_code == 401
    assert refused.json() == {"type": "error", "error": {"type": "authentication_error",
                                                         "message": "Invalid or missing API key"}}
    accepted = requests.post(f"{hardened.url}/v1/messages", json=body, headers={"x-api-key": FLAG_KEY}, timeout=120)
    assert accepted.status_code == 200, accepted.text


def test_keys_never_reach_the_log_or_the_settings_repr(hardened: ServerProcess) -> None:
    requests.get(f"{hardened.url}/v1/models", headers=bearer(FLAG_KEY), timeout=30)
    requests.get(f"{hardened.url}/v1/models", headers=bearer("wrong-key-c0ffee"), timeout=30)
    log = hardened.log()
    for secret in (FLAG_KEY, ENV_KEY, FILE_KEY, "wrong-key-c0ffee"):
        assert secret not in log
    assert FLAG_KEY not in repr(Settings(api_keys=(FLAG_KEY,)))


def test_cors_preflight_and_headers_for_the_allowed_origin_only(hardened: ServerProcess) -> None:
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}  # fmt: skip
    response = requests.options(f"{hardened.url}/v1/chat/completions", headers=preflight, timeout=30)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "authorization" in response.headers["Access-Control-Allow-Headers"].lower()
    other = requests.options(
        f"{hardened.url}/v1/chat/completions", headers={**preflight, "Origin": "https://evil.example"}, timeout=30
    )
    assert "Access-Control-Allow-Origin" not in other.headers
    simple = requests.get(f"{hardened.url}/v1/models", headers={"Origin": ORIGIN, **bearer(FLAG_KEY)}, timeout=30)
    assert simple.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "x-request-id" in simple.headers["Access-Control-Expose-Headers"].lower()
    refused = requests.get(f"{hardened.url}/v1/models", headers={"Origin": ORIGIN}, timeout=30)
    assert refused.status_code == 401  # a browser can read the 401 too
    assert refused.headers["Access-Control-Allow-Origin"] == ORIGIN
