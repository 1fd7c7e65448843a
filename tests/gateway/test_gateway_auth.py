"""--api-key: every route but the exempt paths needs `Authorization: Bearer <key>`; answers are OpenAI's 401
envelope; the key is compared in constant time and never reaches a log line."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import TypeAdapter

from gateway import auth
from gateway.app import create_app
from gateway.gateway_metrics import GatewayMetrics, create_metrics_app
from gateway.openai_schema import ErrorResponse
from gateway.settings import GatewaySettings
from paddlellm.errors import ConfigError, EngineError
from tests.fakes.triton_client import FakeTritonClient

KEY = "s3cret-Key-4711"
OK = {"Authorization": f"Bearer {KEY}"}
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
COMPLETION = {"prompt": "Hi", "max_tokens": 4}


def _client(**settings: Any) -> TestClient:
    app = create_app(
        GatewaySettings(api_key=KEY, **settings), client=FakeTritonClient(), metrics=GatewayMetrics()
    )
    return TestClient(app)


def _unauthorized(r: Any) -> None:
    assert r.status_code == 401, r.text
    err = TypeAdapter(ErrorResponse).validate_python(r.json())["error"]
    assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", "invalid_api_key", None)
    assert r.headers["www-authenticate"] == "Bearer"
    assert KEY not in r.text


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": f"Bearer {KEY}x"},
        {"Authorization": f"Bearer {KEY[:-1]}"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": KEY},
        {"X-Api-Key": KEY},
    ],
)
def test_missing_or_wrong_key_is_401_everywhere_but_the_exempt_paths(headers: dict[str, str]) -> None:
    with _client() as c:
        _unauthorized(c.post("/v1/chat/completions", json=CHAT, headers=headers))
        _unauthorized(c.post("/v1/completions", json=COMPLETION, headers=headers))
        _unauthorized(c.get("/v1/models", headers=headers))
        _unauthorized(c.get("/v1/models/default", headers=headers))
        _unauthorized(c.get("/openapi.json", headers=headers))
        _unauthorized(c.get("/v1/nope", headers=headers))  # before routing: no hint which paths exist
        for path in ("/health", "/ready", "/metrics"):
            assert c.get(path, headers=headers).status_code == 200, path


def test_right_key_is_served() -> None:
    with _client() as c:
        for headers in (OK, {"authorization": f"bearer  {KEY} "}):  # scheme case and spaces do not matter
            assert c.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 200
        stream = c.post("/v1/completions", json={**COMPLETION, "stream": True}, headers=OK)
        assert stream.status_code == 200 and stream.text.endswith("data: [DONE]\n\n")
        assert c.get("/v1/models", headers=OK).json()["data"][0]["id"] == "default"
        assert c.get("/openapi.json", headers=OK).status_code == 200
        assert c.get("/v1/nope", headers=OK).status_code == 404


def test_exempt_paths_are_configurable() -> None:
    with _client(api_key_exempt_paths=("/ready",)) as c:
        assert c.get("/ready").status_code == 200
        _unauthorized(c.get("/health"))
        _unauthorized(c.get("/metrics"))
        _unauthorized(c.get("/ready/"))  # exact paths only
        assert c.get("/health", headers=OK).status_code == 200
    with _client(api_key_exempt_paths=()) as c:
        _unauthorized(c.get("/health"))
        assert c.get("/metrics", headers=OK).status_code == 200


def test_the_separate_metrics_server_uses_the_same_rule() -> None:
    guarded = GatewaySettings(api_key=KEY, api_key_exempt_paths=("/health",), metrics_port=9100)
    with TestClient(create_metrics_app(guarded, GatewayMetrics())) as c:
        _unauthorized(c.get("/metrics"))
        assert c.get("/metrics", headers=OK).status_code == 200
    with TestClient(create_metrics_app(GatewaySettings(api_key=KEY), GatewayMetrics())) as c:
        assert c.get("/metrics").status_code == 200  # exempt by default


def test_the_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", recording)
    assert auth.key_matches(f"Bearer {KEY}".encode(), KEY.encode())
    assert not auth.key_matches(b"Bearer short", KEY.encode())
    # Both sides are digests of one length, so not even the key's length leaks.
    assert len(seen) == 2 and all(len(a) == len(b) == 32 for a, b in seen)


def test_the_key_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, every level
    fake = FakeTritonClient()
    settings = GatewaySettings(api_key=KEY)
    with TestClient(create_app(settings, client=fake, metrics=GatewayMetrics())) as c:
        assert c.post("/v1/chat/completions", json=CHAT, headers=OK).status_code == 200
        c.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {KEY}-wrong"})
        c.post("/v1/chat/completions", json={"messages": "x"}, headers=OK)
        fake.fail_with = EngineError(f"boom {KEY[:3]}")
        assert c.post("/v1/chat/completions", json=CHAT, headers=OK).status_code == 500
    assert caplog.records  # the failure above was logged
    assert KEY not in caplog.text
    assert KEY not in repr(settings) and KEY not in str(settings)


def test_exempt_paths_in_settings_files() -> None:
    data = json.loads(GatewaySettings(api_key_exempt_paths=("/a", "/b")).to_json())
    assert GatewaySettings.from_dict(data).api_key_exempt_paths == ("/a", "/b")
    with pytest.raises(ConfigError, match="api_key_exempt_paths"):
        GatewaySettings(api_key_exempt_paths=("health",))
