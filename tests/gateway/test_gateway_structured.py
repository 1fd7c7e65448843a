"""Structured output through the gateway (issue #26) against the fake Triton client: every request field that
asks for it (OpenAI's response_format, vLLM's structured_outputs and guided_*) reaches the engine as one
`structured_outputs` spec in the sampling JSON, its `param` the field the client used; bad shapes are 400s
naming the field before anything is sent; the engine's compile errors (the fake's stand-ins) come back as
400s with that param, streamed or not; the server keeps serving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel, TypeAdapter

from gateway.app import create_app
from gateway.openai_schema import ErrorResponse
from gateway.settings import GatewaySettings
from paddlellm import protocol
from paddlellm.errors import InvalidRequest
from tests.fakes.triton_client import FakeTritonClient

CHAT = {"model": "default", "messages": [{"role": "user", "content": "A city as JSON."}], "max_tokens": 20}
COMPLETION = {"model": "default", "prompt": "A city as JSON:", "max_tokens": 20}
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "population": {"type": "integer", "minimum": 0}},
    "required": ["name", "population"],
    "additionalProperties": False,
}
COMPACT = json.dumps(SCHEMA, separators=(",", ":"))


@pytest.fixture
def fake() -> FakeTritonClient:
    return FakeTritonClient(max_model_len=256, compile_structured=True)


@pytest.fixture
def client(fake: FakeTritonClient) -> Iterator[TestClient]:
    settings = GatewaySettings(served_model_name="smol", max_model_len=256)
    with TestClient(create_app(settings, client=fake)) as c:
        yield c


def _sent_spec(fake: FakeTritonClient) -> dict[str, Any] | None:
    stream = [s for s in fake.streams if s.model == "ensemble"][-1]
    return json.loads(stream.inputs[protocol.SAMPLING])["structured_outputs"]


def _error(r: Any) -> dict[str, Any]:
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/json")  # before the stream: a plain 400
    return dict(TypeAdapter(ErrorResponse).validate_python(r.json())["error"])


# (request fields, expected spec: kind, value, whitespace_flexible, param)
ACCEPTED = [
    (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "city", "schema": SCHEMA, "strict": True},
            }
        },
        ("json_schema", COMPACT, False, "response_format.json_schema.schema"),
    ),
    (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "c", "schema": SCHEMA, "description": "d"},
            }
        },
        ("json_schema", COMPACT, False, "response_format.json_schema.schema"),
    ),
    ({"response_format": {"type": "json_object"}}, ("json_object", "", False, "response_format")),
    # Whitespace options in structured_outputs apply to response_format's JSON (as vLLM combines them).
    (
        {"response_format": {"type": "json_object"}, "structured_outputs": {"whitespace_flexible": True}},
        ("json_object", "", True, "response_format"),
    ),
    ({"structured_outputs": {"json": SCHEMA}}, ("json_schema", COMPACT, False, "structured_outputs.json")),
    (
        {"structured_outputs": {"json": SCHEMA, "disable_any_whitespace": False}},
        ("json_schema", COMPACT, True, "structured_outputs.json"),
    ),
    (
        {"structured_outputs": {"json": SCHEMA, "disable_any_whitespace": True, "disable_fallback": True}},
        ("json_schema", COMPACT, False, "structured_outputs.json"),
    ),
    ({"structured_outputs": {"regex": "[0-9]{3}"}}, ("regex", "[0-9]{3}", False, "structured_outputs.regex")),
    (
        {"structured_outputs": {"choice": ["yes", "no"], "json": None}},
        ("choice", ["yes", "no"], False, "structured_outputs.choice"),
    ),
    (
        {"structured_outputs": {"grammar": 'start: "a"+', "json_object": False}},
        ("grammar", 'start: "a"+', False, "structured_outputs.grammar"),
    ),
    (
        {"structured_outputs": {"json_object": True}},
        ("json_object", "", False, "structured_outputs.json_object"),
    ),
    ({"guided_json": SCHEMA}, ("json_schema", COMPACT, False, "guided_json")),
    (
        {"guided_json": SCHEMA, "structured_outputs": {"whitespace_flexible": True}},
        ("json_schema", COMPACT, True, "guided_json"),
    ),
    ({"guided_regex": "a|b", "guided_decoding_backend": "xgrammar"}, ("regex", "a|b", False, "guided_regex")),
    ({"guided_choice": ["x", "y"]}, ("choice", ["x", "y"], False, "guided_choice")),
    ({"guided_grammar": "root ::= [a-z]+"}, ("grammar", "root ::= [a-z]+", False, "guided_grammar")),
    # Whitespace options mean nothing to a regex (which fixes its own): accepted, not applied.
    (
        {"guided_regex": "a b", "structured_outputs": {"whitespace_flexible": True}},
        ("regex", "a b", False, "guided_regex"),
    ),
]


@pytest.mark.parametrize(("fields", "expect"), ACCEPTED)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_each_field_reaches_the_engine_as_one_spec(
    client: TestClient, fake: FakeTritonClient, path: str, fields: dict, expect: tuple
) -> None:
    body = {**(CHAT if "chat" in path else COMPLETION), **fields}
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    spec = _sent_spec(fake)
    assert spec is not None
    assert (spec["kind"], spec["value"], spec["whitespace_flexible"], spec["param"]) == expect


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"response_format": {"type": "text"}},
        {"response_format": None, "structured_outputs": None, "guided_json": None},
        {"structured_outputs": {"disable_any_whitespace": True}},  # options alone: no constraint (as vLLM)
        {"guided_whitespace_pattern": None},
    ],
)
def test_no_constraint_sends_none(client: TestClient, fake: FakeTritonClient, fields: dict) -> None:
    assert client.post("/v1/chat/completions", json={**CHAT, **fields}).status_code == 200
    assert _sent_spec(fake) is None


def test_every_choice_carries_the_spec(client: TestClient, fake: FakeTritonClient) -> None:
    r = client.post("/v1/chat/completions", json={**CHAT, "n": 3, "guided_choice": ["a", "b"]})
    assert r.status_code == 200 and len(r.json()["choices"]) == 3
    sent = [json.loads(s.inputs[protocol.SAMPLING]) for s in fake.streams if s.model == "ensemble"]
    assert len(sent) == 3 and all(s["structured_outputs"]["value"] == ["a", "b"] for s in sent)


DEEP = {"type": "object"}
for _ in range(35):  # 71 levels of nesting: past the spec's limit (64), within the JSON parser's (~200)
    DEEP = {"type": "object", "properties": {"a": DEEP}}

REFUSED = [
    # Shapes (pydantic, before anything is sent).
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": "json_object"}, "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA}}},
        "response_format.json_schema.name",
    ),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
        "response_format.json_schema.schema",
    ),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": "{}"}}},
        "response_format.json_schema.schema",
    ),
    ({"structured_outputs": {"regex": ""}}, "structured_outputs.regex"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs.choice"),
    ({"structured_outputs": {"choice": ["a", 1]}}, "structured_outputs.choice[1]"),
    (
        {"structured_outputs": {"json": SCHEMA, "whitespace_pattern": " "}},
        "structured_outputs.whitespace_pattern",
    ),
    ({"structured_outputs": {"structural_tag": "{}"}}, "structured_outputs.structural_tag"),
    ({"structured_outputs": "regex"}, "structured_outputs"),
    ({"guided_json": "{}"}, "guided_json"),  # a schema is an object here (vLLM's JSON text: Triton only)
    ({"guided_choice": ["a", ""]}, "guided_choice[1]"),
    ({"guided_choice": [f"c{i}" for i in range(4097)]}, "guided_choice"),
    ({"guided_grammar": 3}, "guided_grammar"),
    ({"guided_json": SCHEMA, "guided_whitespace_pattern": "[ ]?"}, "guided_whitespace_pattern"),
    # Spec-level (the gateway's StructuredSpec): too deep.
    ({"guided_json": DEEP}, "guided_json"),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "d", "schema": DEEP}}},
        "response_format.json_schema.schema",
    ),
    # Two constraints: the second (in the documented order) is named.
    ({"response_format": {"type": "json_object"}, "guided_regex": "a"}, "guided_regex"),
    (
        {"response_format": {"type": "json_object"}, "structured_outputs": {"choice": ["a"]}},
        "structured_outputs.choice",
    ),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs.choice"),
    ({"structured_outputs": {"json": {}, "json_object": True}}, "structured_outputs.json_object"),
    ({"guided_json": {}, "guided_grammar": 'start: "a"'}, "guided_grammar"),
    # Compile errors: the engine's answer (the fake's stand-ins), a 400 naming the field.
    ({"guided_regex": "(unclosed"}, "guided_regex"),
    ({"structured_outputs": {"regex": "[z-a]"}}, "structured_outputs.regex"),
    (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "n", "schema": {"not": {"type": "string"}}},
            }
        },
        "response_format.json_schema.schema",
    ),
    ({"structured_outputs": {"json": {"properties": {"a": {"not": {}}}}}}, "structured_outputs.json"),
    # A tool choice without tools: refused on chat (nothing to choose from) and on completions (no tools).
    ({"tool_choice": "required"}, "tool_choice"),
]


@pytest.mark.parametrize(("fields", "param"), REFUSED)
@pytest.mark.parametrize("stream", [False, True])
def test_bad_input_is_a_400_naming_the_field(
    client: TestClient, fake: FakeTritonClient, fields: dict, param: str, stream: bool
) -> None:
    for path, base in (("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)):
        err = _error(client.post(path, json={**base, **fields, "stream": stream}))
        assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"], err
        assert "Traceback" not in err["message"]
    ok = client.post("/v1/chat/completions", json={**CHAT, "guided_choice": ["a"]})
    assert ok.status_code == 200  # still serving, constrained requests too


def test_compile_errors_name_the_problem(client: TestClient) -> None:
    err = _error(client.post("/v1/chat/completions", json={**CHAT, "guided_regex": "(a"}))
    assert "regex does not compile" in err["message"]
    schema = {"type": "object", "properties": {"a": {"not": {"type": "null"}}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
    err = _error(client.post("/v1/chat/completions", json={**CHAT, "response_format": fmt, "stream": True}))
    assert "'not'" in err["message"] and err["param"] == "response_format.json_schema.schema"


def test_an_engine_refusal_with_any_param_is_a_400_with_it(
    client: TestClient, fake: FakeTritonClient
) -> None:
    """Whatever the engine names (e.g. where in the schema), the client sees it, streamed or not."""
    fake.fail_with = InvalidRequest(
        "unsupported JSON Schema keyword 'uniqueItems' at /properties/tags", param="guided_json"
    )
    for stream in (False, True):
        err = _error(
            client.post("/v1/chat/completions", json={**CHAT, "guided_json": SCHEMA, "stream": stream})
        )
        assert err["param"] == "guided_json" and "uniqueItems" in err["message"]
    fake.fail_with = None
    assert client.post("/v1/chat/completions", json={**CHAT, "guided_json": SCHEMA}).status_code == 200


class City(BaseModel):
    name: str
    population: int


def test_the_openai_sdk_parse_sends_a_json_schema_and_reads_the_answer(
    client: TestClient, fake: FakeTritonClient
) -> None:
    """`client.chat.completions.parse(response_format=PydanticModel)`: the SDK sends name + schema + strict;
    the (fake) engine's JSON answer comes back parsed."""
    from openai import OpenAI

    answer = '{"name":"Paris","population":2100000}'
    fake.reply = tuple((200 + i, answer[i : i + 5]) for i in range(0, len(answer), 5))
    api = OpenAI(base_url="http://testserver/v1", api_key="-", http_client=client)
    done = api.chat.completions.parse(model="default", messages=CHAT["messages"], response_format=City)
    assert done.choices[0].message.parsed == City(name="Paris", population=2100000)
    spec = _sent_spec(fake)
    assert spec is not None and spec["param"] == "response_format.json_schema.schema"
    schema = json.loads(spec["value"])
    assert schema["properties"].keys() == {"name", "population"} and schema["additionalProperties"] is False


def test_the_api_document_states_the_fields(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    fields = {"response_format", "structured_outputs", "guided_json", "guided_regex", "guided_choice"}
    for model in ("ChatCompletionRequest", "CompletionRequest"):
        props = schemas[model]["properties"]
        assert fields | {"guided_grammar", "guided_whitespace_pattern"} <= set(props)
        formats = props["response_format"]["anyOf"][0]["oneOf"]
        names = [f["$ref"].rsplit("/", 1)[1] for f in formats]
        assert names == ["TextFormat", "JsonObjectFormat", "JsonSchemaResponseFormat"]
        assert props["guided_whitespace_pattern"]["type"] == "null"
    assert schemas["JsonSchemaFormat"]["required"] == ["name", "schema"]
    structured = schemas["StructuredOutputs"]
    assert structured["additionalProperties"] is False
    assert {"json", "regex", "choice", "grammar", "json_object", "whitespace_flexible"} <= set(
        structured["properties"]
    )
