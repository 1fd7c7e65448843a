"""Tool calling through the gateway (issue #27) against the fake Triton client: what reaches the ensemble
(the `tools` input, the grammar of a forced or lazily constrained choice), how answers become OpenAI
`tool_calls` (whole and streamed: the streamed deltas fold into exactly the non-streamed calls, content
null when only tools are called, finish_reason "tool_calls"), and the 400s for bad tool input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import TypeAdapter

from gateway.app import create_app
from gateway.openai_schema import ChatCompletion, ChatCompletionChunk, ErrorResponse
from gateway.settings import GatewaySettings
from paddlellm import protocol
from paddlellm.sampling import SamplingParams
from tests.fakes.triton_client import FakeTritonClient

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}
CHAT = {
    "model": "default",
    "messages": [{"role": "user", "content": "Weather in Paris?"}],
    "max_tokens": 200,
    "tools": [WEATHER, TIME],
}
EOS = 2


def _pieces(text: str, size: int = 3) -> tuple[tuple[int, str], ...]:
    """The reply's text as tokens of `size` characters (split points fall inside markers and JSON)."""
    return tuple((1000 + i, text[i : i + size]) for i in range(0, len(text), size))


def _client(parser: str, reply: str, **settings: Any) -> Iterator[tuple[TestClient, FakeTritonClient]]:
    fake = FakeTritonClient(reply=_pieces(reply), eos_id=EOS, max_model_len=4096)
    conf = GatewaySettings(served_model_name="smol", max_model_len=4096, tool_call_parser=parser, **settings)
    with TestClient(create_app(conf, client=fake)) as c:
        yield c, fake


GENERIC_CALLS = (
    '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
    '{"name": "get_time", "arguments": {}}]}'
)
HERMES = (
    'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
)


@pytest.fixture
def generic() -> Iterator[tuple[TestClient, FakeTritonClient]]:
    yield from _client("generic", GENERIC_CALLS)


def _sent(fake: FakeTritonClient) -> tuple[SamplingParams, Any]:
    stream = [s for s in fake.streams if s.model == "ensemble"][-1]
    tools = stream.inputs.get(protocol.TOOLS)
    return SamplingParams.from_json(stream.inputs[protocol.SAMPLING]), json.loads(tools) if tools else None


def _stream(client: TestClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    chunks = []
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                TypeAdapter(ChatCompletionChunk).validate_python(chunk)
                chunks.append(chunk)
    return chunks


def _folded(chunks: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]], str | None]:
    """(content, calls, finish_reason) as the openai SDK folds streamed deltas."""
    content, calls, finish = "", {}, None
    for c in chunks:
        for ch in c["choices"]:
            d = ch["delta"]
            content += d.get("content") or ""
            for tc in d.get("tool_calls", []):
                if "id" in tc:
                    calls[tc["index"]] = {
                        "id": tc["id"],
                        "type": tc["type"],
                        "function": dict(tc["function"]),
                    }
                else:
                    calls[tc["index"]]["function"]["arguments"] += tc["function"]["arguments"]
            finish = ch["finish_reason"] or finish
    return content or None, [calls[i] for i in sorted(calls)], finish


def _no_ids(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in calls]


@pytest.mark.parametrize("choice", ["required", "auto"])
def test_generic_calls_whole_and_streamed(generic: tuple[TestClient, FakeTritonClient], choice: str) -> None:
    client, fake = generic
    r = client.post("/v1/chat/completions", json={**CHAT, "tool_choice": choice})
    assert r.status_code == 200, r.text
    body = TypeAdapter(ChatCompletion).validate_python(r.json())
    choice0 = body["choices"][0]
    msg = choice0["message"]
    assert msg["content"] is None and choice0["finish_reason"] == "tool_calls"
    expected = [
        {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"name": "get_time", "arguments": "{}"},
    ]
    assert _no_ids(list(msg["tool_calls"])) == expected
    ids = [c["id"] for c in msg["tool_calls"]]
    assert len(set(ids)) == 2 and all(i.startswith("call_") for i in ids)
    # What the engine was asked: the grammar (named by "tools") and the tools for the template.
    sp, tools = _sent(fake)
    assert tools == [WEATHER, TIME]
    spec = sp.structured_outputs
    assert spec is not None and spec.kind == "grammar" and spec.param == "tools"
    assert '"tool_calls"' in str(spec.value) and ("content" in str(spec.value)) == (choice == "auto")
    content, calls, finish = _folded(_stream(client, {**CHAT, "tool_choice": choice}))
    assert content is None and finish == "tool_calls" and _no_ids(calls) == expected


def test_generic_content_answer_streams_as_content() -> None:
    for client, _ in _client("generic", '{"content": "It is sunny in \\"Paris\\" \\u00e9t\\u00e9."}'):
        r = client.post("/v1/chat/completions", json=CHAT).json()
        msg = r["choices"][0]["message"]
        assert msg["content"] == 'It is sunny in "Paris" été.' and "tool_calls" not in msg
        assert r["choices"][0]["finish_reason"] == "stop"
        chunks = _stream(client, CHAT)
        content, calls, finish = _folded(chunks)
        assert content == msg["content"] and calls == [] and finish == "stop"
        assert (
            sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")) > 3
        )  # streamed


def test_hermes_auto_text_then_calls_lazily_constrained() -> None:
    for client, fake in _client("hermes", HERMES):
        r = client.post("/v1/chat/completions", json=CHAT).json()
        msg = r["choices"][0]["message"]
        assert msg["content"] == "Let me check." and r["choices"][0]["finish_reason"] == "tool_calls"
        assert _no_ids(msg["tool_calls"]) == [
            {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            {"name": "get_time", "arguments": "{}"},
        ]
        spec = _sent(fake)[0].structured_outputs
        assert spec is not None and "[lazy]" in str(spec.value) and "<tool_call>" in str(spec.value)
        content, calls, finish = _folded(_stream(client, CHAT))
        assert content == "Let me check." and _no_ids(calls) == _no_ids(msg["tool_calls"])
        assert "<tool_call>" not in (content or "") and finish == "tool_calls"


def test_hermes_malformed_call_is_content_not_lost() -> None:
    text = 'Hi <tool_call>\n{"name": "get_weather", "arguments": {"city": </tool_call> bye'
    for client, _ in _client("hermes", text):
        r = client.post("/v1/chat/completions", json=CHAT).json()
        msg = r["choices"][0]["message"]
        assert (
            msg["content"] == text and "tool_calls" not in msg and r["choices"][0]["finish_reason"] == "stop"
        )
        assert _folded(_stream(client, CHAT))[0] == text


def test_named_choice_forces_that_function_only() -> None:
    reply = '{"tool_calls": [{"name": "get_time", "arguments": {}}]}'
    for client, fake in _client("generic", reply):
        named = {"type": "function", "function": {"name": "get_time"}}
        r = client.post("/v1/chat/completions", json={**CHAT, "tool_choice": named}).json()
        assert _no_ids(r["choices"][0]["message"]["tool_calls"]) == [{"name": "get_time", "arguments": "{}"}]
        grammar = str(_sent(fake)[0].structured_outputs.value)  # type: ignore[union-attr]
        assert '"get_time"' in grammar and '"get_weather"' not in grammar and '"maxItems": 1' in grammar


def test_none_sends_no_tools_and_parses_nothing() -> None:
    for client, fake in _client("hermes", GENERIC_CALLS):
        r = client.post("/v1/chat/completions", json={**CHAT, "tool_choice": "none"}).json()
        assert r["choices"][0]["message"]["content"] == GENERIC_CALLS
        assert "tool_calls" not in r["choices"][0]["message"]
        sp, tools = _sent(fake)
        assert tools is None and sp.structured_outputs is None


def test_generic_none_is_content_only() -> None:
    """generic answers are JSON: with "none" the tools are shown and the answer is `{"content": ..}`, unless
    the request has its own output constraint, which wins."""
    for client, fake in _client("generic", '{"content": "Sunny."}'):
        r = client.post("/v1/chat/completions", json={**CHAT, "tool_choice": "none"}).json()
        assert (
            r["choices"][0]["message"]["content"] == "Sunny." and r["choices"][0]["finish_reason"] == "stop"
        )
        sp, tools = _sent(fake)
        spec = sp.structured_outputs
        assert tools == [WEATHER, TIME] and spec is not None and spec.param == "tool_choice"
        assert '"content"' in str(spec.value) and "tool_calls" not in str(spec.value)
        fmt = {"response_format": {"type": "json_object"}}
        client.post("/v1/chat/completions", json={**CHAT, "tool_choice": "none", **fmt})
        sp, tools = _sent(fake)
        assert (
            tools is None
            and sp.structured_outputs is not None
            and sp.structured_outputs.kind == "json_object"
        )


def test_no_tools_no_tools_input() -> None:
    for client, fake in _client("hermes", "Hello"):
        body = {k: v for k, v in CHAT.items() if k != "tools"}
        assert (
            client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
            == "Hello"
        )
        stream = [s for s in fake.streams if s.model == "ensemble"][-1]
        assert protocol.TOOLS not in stream.inputs


def test_history_with_calls_and_results_reaches_the_template() -> None:
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    for client, fake in _client("generic", '{"content": "Sunny."}'):
        r = client.post("/v1/chat/completions", json={**CHAT, "messages": history, "tool_choice": "none"})
        assert r.status_code == 200, r.text
        stream = [s for s in fake.streams if s.model == "ensemble"][-1]
        sent = json.loads(stream.inputs[protocol.MESSAGES])
        assert sent[1]["content"] is None and sent[1]["tool_calls"] == history[1]["tool_calls"]
        assert sent[2] == {"role": "tool", "content": "sunny, 21 C", "tool_call_id": "call_1"}


def _error(r: Any) -> dict[str, Any]:
    assert r.status_code == 400, r.text
    return dict(TypeAdapter(ErrorResponse).validate_python(r.json())["error"])


REFUSED = [
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name"),
    ({"tools": None, "tool_choice": "required"}, "tool_choice"),
    ({"tools": [], "tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "tool_choice"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools[0].type"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
    (
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
        "tools[0].function.parameters",
    ),
    ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": "x",
                    "tool_calls": [
                        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                }
            ]
        },
        "messages[0]",
    ),
    (
        {
            "messages": [
                {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "function": {"name": "f"}}]}
            ]
        },
        "messages[0].tool_calls[0].function.arguments",
    ),
]


@pytest.mark.parametrize(("fields", "param"), REFUSED)
@pytest.mark.parametrize("stream", [False, True])
def test_bad_tool_input_is_a_400_naming_the_field(
    generic: tuple[TestClient, FakeTritonClient], fields: dict[str, Any], param: str, stream: bool
) -> None:
    client, _ = generic
    err = _error(client.post("/v1/chat/completions", json={**CHAT, **fields, "stream": stream}))
    assert err["param"] == param and err["type"] == "invalid_request_error", err
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200  # still serving


def test_completions_have_no_tools(generic: tuple[TestClient, FakeTritonClient]) -> None:
    client, _ = generic
    body = {"model": "default", "prompt": "hi", "tools": [WEATHER]}
    assert _error(client.post("/v1/completions", json=body))["param"] == "tools"
    ok = {"model": "default", "prompt": "hi", "tools": [], "tool_choice": "none"}
    assert client.post("/v1/completions", json=ok).status_code == 200


def test_auto_refused_when_the_server_turns_it_off() -> None:
    for client, _ in _client("generic", GENERIC_CALLS, enable_auto_tool_choice=False):
        err = _error(client.post("/v1/chat/completions", json=CHAT))  # auto is the default with tools
        assert err["param"] == "tool_choice" and "--no-enable-auto-tool-choice" in err["message"]
        r = client.post("/v1/chat/completions", json={**CHAT, "tool_choice": "required"})
        assert r.status_code == 200


def test_each_of_n_choices_parses_its_own_calls(generic: tuple[TestClient, FakeTritonClient]) -> None:
    client, _ = generic
    body = {**CHAT, "tool_choice": "required", "n": 2}
    r = client.post("/v1/chat/completions", json=body).json()
    assert [c["index"] for c in r["choices"]] == [0, 1]
    for c in r["choices"]:
        assert c["finish_reason"] == "tool_calls" and [
            t["function"]["name"] for t in c["message"]["tool_calls"]
        ] == [
            "get_weather",
            "get_time",
        ]
    chunks = _stream(client, body)
    for index in (0, 1):
        mine = [{**c, "choices": [ch for ch in c["choices"] if ch["index"] == index]} for c in chunks]
        content, calls, finish = _folded(mine)
        assert (
            content is None and finish == "tool_calls" and [t["index"] for t in _tool_deltas(mine)] == [0, 1]
        )


def _tool_deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [tc for c in chunks for ch in c["choices"] for tc in ch["delta"].get("tool_calls", [])]
