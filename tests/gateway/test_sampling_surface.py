"""The gateway's sampling surface comes from the declarations in paddlellm.sampling.SPECS: the request
schema's bounds (in /openapi.json), the 400 for a value outside them, the settings' defaults and the table
in docs/api.md."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import GatewaySettings
from paddlellm.errors import ConfigError
from paddlellm.sampling import SPECS, ParamSpec, markdown_table
from tests.fakes.triton_client import FakeTritonClient

ROOT = Path(__file__).resolve().parents[2]
OPENAI = [(name, spec) for name, spec in SPECS.items() if spec.openai]
BODIES = {
    "ChatCompletionRequest": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    "CompletionRequest": ("/v1/completions", {"prompt": "hi"}),
}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = GatewaySettings(served_model_name="smol", max_model_len=256)
    with TestClient(create_app(settings, client=FakeTritonClient(max_model_len=256))) as c:
        yield c


def _number_branch(prop: dict[str, Any], spec: ParamSpec) -> dict[str, Any]:
    branches = [b for b in prop.get("anyOf", [prop]) if b.get("type") in ("integer", "number", "array")]
    assert len(branches) == 1, prop
    branch = branches[0]
    return branch["items"] if spec.kind == "ids" else branch


@pytest.mark.parametrize(("name", "spec"), OPENAI, ids=[n for n, _ in OPENAI])
def test_request_schema_bounds_come_from_specs(client: TestClient, name: str, spec: ParamSpec) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    for model in BODIES:
        prop = schemas[model]["properties"][spec.openai]
        if spec.kind == "bool":
            assert {b.get("type") for b in prop["anyOf"]} == {"boolean", "null"}
            continue
        branch = _number_branch(prop, spec)
        assert branch["type"] == ("number" if spec.kind == "float" else "integer")
        lo_key, hi_key = (
            ("exclusiveMinimum" if spec.lo_open else "minimum"),
            ("exclusiveMaximum" if spec.hi_open else "maximum"),
        )
        assert branch.get(lo_key) == spec.lo
        if spec.hi is not None:
            assert branch[hi_key] == spec.hi
        elif name != "max_tokens":  # the document bounds max_tokens by max_model_len
            assert "maximum" not in branch and "exclusiveMaximum" not in branch


def _outside(spec: ParamSpec) -> list[Any]:
    step = 1 if spec.kind in ("int", "ids") else 0.5
    values: list[Any] = []
    if spec.lo is not None:
        values.append(spec.lo if spec.lo_open else spec.lo - step)
    if spec.hi is not None:
        values.append(spec.hi if spec.hi_open else spec.hi + step)
    values = [int(v) if spec.kind in ("int", "ids") else v for v in values]
    return [[v] for v in values] if spec.kind == "ids" else values


@pytest.mark.parametrize(
    ("name", "spec"),
    [(n, s) for n, s in OPENAI if s.kind != "bool"],
    ids=[n for n, s in OPENAI if s.kind != "bool"],
)
def test_out_of_range_is_a_400_naming_the_param(client: TestClient, name: str, spec: ParamSpec) -> None:
    for path, body in BODIES.values():
        for value in _outside(spec):
            r = client.post(path, json={**body, spec.openai: value})
            assert r.status_code == 400, (value, r.text)
            assert r.json()["error"]["param"].startswith(spec.openai), r.json()
        assert client.post(path, json={**body, "max_tokens": 2}).status_code == 200  # still serving


def test_settings_defaults_checked_by_the_declarations() -> None:
    with pytest.raises(ConfigError, match="default_temperature"):
        GatewaySettings(default_temperature=SPECS["temperature"].hi + 0.5)  # type: ignore[operator]
    with pytest.raises(ConfigError, match="default_top_p"):
        GatewaySettings(default_top_p=0.0)  # top_p's lower bound is open
    with pytest.raises(ConfigError, match="max_n"):
        GatewaySettings(max_n=0)
    assert GatewaySettings(default_temperature=0, default_top_p=1).default_top_p == 1


def test_docs_sampling_table_is_generated() -> None:
    text = (ROOT / "docs/api.md").read_text()
    start, end = "<!-- sampling-table:start -->\n", "\n<!-- sampling-table:end -->"
    assert start in text and end in text, "docs/api.md lacks the sampling-table markers"
    assert text.split(start, 1)[1].split(end, 1)[0] == markdown_table(), (
        "docs/api.md's sampling table is stale: paste paddlellm.sampling.markdown_table() between the markers"
    )


def test_n_maximum_is_max_n_in_the_document() -> None:
    settings = GatewaySettings(max_n=4)
    with TestClient(create_app(settings, client=FakeTritonClient())) as c:
        schemas = c.get("/openapi.json").json()["components"]["schemas"]
        assert schemas["ChatCompletionRequest"]["properties"]["n"]["maximum"] == 4
        r = c.post("/v1/completions", json={**BODIES["CompletionRequest"][1], "n": 5})
        assert r.status_code == 400 and r.json()["error"]["param"] == "n"
