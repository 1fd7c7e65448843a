"""The OpenAPI document matches the API: schemathesis (every check, positive and negative data) runs over the
gateway's /openapi.json against a real uvicorn server in front of the fake Triton client, and finds no
mismatch and no 5xx. Generations stay short: the fake's reply is 13 tokens and max_model_len is 64, which
the document passes on to max_tokens."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.openai_schema import ONE_TO_MAX_INTERVAL
from gateway.settings import GatewaySettings
from paddlellm.sampling import MAX_STREAM_INTERVAL
from tests.fakes.triton_client import FakeTritonClient
from tests.gateway.schemathesis_hooks import MAX_TOKENS_CAP_ENV, MAX_TOKENS_MAXIMUM_ENV
from tests.procs import UvicornThread

ROOT = Path(__file__).resolve().parents[2]
KEY = "conformance-key"
MAX_EXAMPLES = 25  # per operation and phase; the whole run takes ~20 s on two cores


def test_schemathesis_finds_no_mismatch(tmp_path: Path) -> None:
    settings = GatewaySettings(
        served_model_name="smol",
        max_model_len=64,
        api_key=KEY,
        max_messages=8,
        max_concurrent_streams=64,
        request_timeout_s=30.0,
    )
    fake = FakeTritonClient(max_model_len=10**9)  # prompts of any length fit: the schema cannot bound them
    with UvicornThread(create_app(settings, client=fake)) as srv:
        run = run_schemathesis(f"http://127.0.0.1:{srv.port}", tmp_path, KEY, MAX_EXAMPLES)
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]


def run_schemathesis(
    base_url: str,
    workdir: Path,
    key: str | None,
    max_examples: int,
    max_tokens_cap: int | None = None,
    max_model_len: int | None = None,
    exclude_checks: tuple[str, ...] = (),
) -> subprocess.CompletedProcess:
    """`schemathesis run` over `<base_url>/openapi.json`, every check, positive and negative data, seeded.
    `max_tokens_cap`: generated max_tokens within the schema's range are lowered to it, and chat requests
    without one get it (schemathesis_hooks.py), so a real model never generates for long."""
    argv = [sys.executable, "-m", "schemathesis.cli", "run", f"{base_url}/openapi.json"]
    argv += ["--checks", "all", "--mode", "all", "--max-examples", str(max_examples), "--seed", "14"]
    argv += ["--workers", "1", "--report-dir", str(workdir)]
    argv += ["--output-sanitize", "false", "--output-truncate", "false"]
    # Not the 10 s default: on a loaded 2-core box a real model's 256-token answer takes longer. A hang guard.
    argv += ["--request-timeout", "120"]
    if key is not None:
        argv += ["-H", f"Authorization: Bearer {key}"]
    if exclude_checks:
        argv += ["--exclude-checks", ",".join(exclude_checks)]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.gateway.schemathesis_hooks", "NO_COLOR": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    if max_tokens_cap is not None:
        env[MAX_TOKENS_CAP_ENV] = str(max_tokens_cap)
    if max_model_len is not None:
        env[MAX_TOKENS_MAXIMUM_ENV] = str(max_model_len - 1)
    # In workdir: schemathesis keeps a cache directory in its working directory.
    return subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=1200)


def _document(**settings: Any) -> dict:
    app = create_app(GatewaySettings(served_model_name="smol", **settings), client=FakeTritonClient())
    with TestClient(app) as c:
        r = c.get("/openapi.json", headers={"Authorization": "Bearer k"})
    assert r.status_code == 200
    return r.json()


def test_every_operation_documents_its_body_and_errors() -> None:
    doc = _document()
    ops = {(m, p): op for p, item in doc["paths"].items() for m, op in item.items()}
    assert set(ops) == {
        ("post", "/v1/chat/completions"),
        ("post", "/v1/completions"),
        ("get", "/v1/models"),
        ("get", "/v1/models/{name}"),
        ("get", "/health"),
        ("get", "/ready"),
    }
    envelope = {"$ref": "#/components/schemas/ErrorResponse"}
    for (_, path), op in ops.items():
        assert "422" not in op["responses"], path  # validation errors are 400s in OpenAI's envelope
        for status, resp in op["responses"].items():
            if status != "200":
                assert resp["content"]["application/json"]["schema"] == envelope, (path, status)
        assert "security" not in op  # no API key configured
    for path in ("/v1/chat/completions", "/v1/completions"):
        op = ops[("post", path)]
        assert op["requestBody"]["required"] is True
        assert sorted(op["responses"]) == ["200", "400", "404", "413", "500", "503"]
        assert set(op["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert sorted(ops[("get", "/v1/models/{name}")]["responses"]) == ["200", "404"]
    assert sorted(ops[("get", "/health")]["responses"]) == ["200", "503"]
    chat = doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert chat["model"]["enum"] == ["default", "smol"] and chat["messages"]["maxItems"] == 2048


def test_settings_shape_the_document() -> None:
    doc = _document(
        api_key="k", max_concurrent_streams=4, request_timeout_s=60.0, max_messages=5, max_model_len=100
    )
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert sorted(chat["responses"]) == ["200", "400", "401", "404", "413", "429", "500", "503", "504"]
    assert chat["responses"]["429"]["headers"]["Retry-After"]["required"] is True
    assert chat["security"] == [{"bearerAuth": []}]
    assert doc["paths"]["/health"]["get"]["security"] == []  # exempt by default
    assert "401" not in doc["paths"]["/health"]["get"]["responses"]
    props = doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert props["messages"]["maxItems"] == 5
    assert [b.get("maximum") for b in props["max_tokens"]["anyOf"]] == [99, None]


def test_metadata_interval_pattern_is_exactly_1_to_max() -> None:
    accepted = [n for n in range(0, MAX_STREAM_INTERVAL + 100) if re.fullmatch(ONE_TO_MAX_INTERVAL, str(n))]
    assert accepted == list(range(1, MAX_STREAM_INTERVAL + 1))
    assert re.fullmatch(ONE_TO_MAX_INTERVAL, "0004096") and not re.fullmatch(ONE_TO_MAX_INTERVAL, "000")
