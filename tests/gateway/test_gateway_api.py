"""The gateway over HTTP (TestClient) against the behavioural fake Triton client."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import TypeAdapter

from gateway.app import create_app
from gateway.openai_schema import ChatCompletion, ChatCompletionChunk, Completion, ErrorResponse
from gateway.settings import GatewaySettings
from paddlellm.errors import EngineDead, EngineError, Overloaded
from tests.fakes.triton_client import DEFAULT_REPLY, FakeTritonClient

REPLY_TEXT = "".join(t for _, t in DEFAULT_REPLY)
REPLY_IDS = [i for i, _ in DEFAULT_REPLY]
CHAT = {
    "model": "default",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Again?"},
    ],
    "max_tokens": 50,
}
COMPLETION = {"model": "smol", "prompt": "The capital of France is", "max_tokens": 50}


@pytest.fixture
def fake() -> FakeTritonClient:
    return FakeTritonClient(max_model_len=256)


def _client(fake: FakeTritonClient, **settings: Any) -> TestClient:
    cfg = {"served_model_name": "smol", "max_model_len": 256, **settings}
    return TestClient(create_app(GatewaySettings(**cfg), client=fake))


@pytest.fixture
def client(fake: FakeTritonClient) -> Iterator[TestClient]:
    with _client(fake) as c:
        yield c


def _eventually(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def sse_events(text: str) -> list[Any]:
    """Parse an SSE body strictly: only `data:` events separated by blank lines, last one [DONE]."""
    assert text.endswith("\n\n")
    events = []
    for block in text[:-2].split("\n\n"):
        assert block.startswith("data: "), block
        payload = block[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    return events[:-1]


def chat_text(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def chunk_ids(chunks: list[dict], key: str = "delta") -> list[int]:
    out = []
    for c in chunks:
        for ch in c["choices"]:
            out += ch[key]["token_ids"] if key == "delta" else ch["token_ids"]
    return out


def test_chat_non_streaming_shape_and_usage(client: TestClient, fake: FakeTritonClient) -> None:
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200, r.text
    body = validate(ChatCompletion, r.json())
    assert body["choices"][0]["message"]["content"] == REPLY_TEXT
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["token_ids"] == REPLY_IDS
    usage = body["usage"]
    assert usage["completion_tokens"] == len(REPLY_IDS)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > len(REPLY_IDS)
    assert r.headers["x-request-id"] == body["id"]
    sent = fake.streams[-1]
    assert sent.parameters == {"triton_enable_empty_final_response": True}
    assert json.loads(sent.inputs["messages"])[0] == {"role": "system", "content": "Be brief."}
    assert json.loads(sent.inputs["sampling"])["max_tokens"] == 50
    assert sent.completed and not sent.cancelled and not fake.aborted


def test_chat_streaming_equals_non_streaming(client: TestClient) -> None:
    plain = client.post("/v1/chat/completions", json=CHAT).json()
    r = client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    chunks = sse_events(r.text)
    for c in chunks:
        validate(ChatCompletionChunk, c)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chat_text(chunks) == plain["choices"][0]["message"]["content"] == REPLY_TEXT
    assert chunk_ids(chunks) == plain["choices"][0]["token_ids"]
    times = [c["choices"][0]["arrival_time"] for c in chunks]
    assert times == sorted(times) and times[0] >= 0
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]
    assert "usage" not in chunks[0]  # only with stream_options.include_usage


def test_completions_stream_and_plain_with_usage_chunk(client: TestClient) -> None:
    plain = client.post("/v1/completions", json={**COMPLETION, "prompt": [COMPLETION["prompt"]]}).json()
    validate(Completion, plain)
    assert plain["choices"][0]["text"] == REPLY_TEXT
    r = client.post(
        "/v1/completions", json={**COMPLETION, "stream": True, "stream_options": {"include_usage": True}}
    )
    chunks = sse_events(r.text)
    for c in chunks:
        validate(Completion, c)
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == REPLY_TEXT
    assert chunk_ids(chunks, key="choice") == plain["choices"][0]["token_ids"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_cached_prompt_tokens_are_in_the_usage(client: TestClient, fake: FakeTritonClient, path: str) -> None:
    """OpenAI's usage.prompt_tokens_details.cached_tokens: the engine's prefix-cache hit, in every usage (the
    non-streamed answer, the streamed usage chunk), also when a stop string ends the stream early."""
    fake.cached_tokens = 3
    body = CHAT if path.endswith("chat/completions") else COMPLETION
    plain = client.post(path, json=body).json()
    assert plain["usage"]["prompt_tokens_details"] == {"cached_tokens": 3}
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}, "stop": ["capital"]}
    chunks = sse_events(client.post(path, json=streamed).text)
    assert chunks[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 3}
    fake.cached_tokens = 0
    assert client.post(path, json=body).json()["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}


def test_length_finish_reason(client: TestClient) -> None:
    r = client.post("/v1/completions", json={**COMPLETION, "max_tokens": 3}).json()
    assert r["choices"][0]["finish_reason"] == "length"
    assert r["choices"][0]["text"] == "Paris is the"
    assert r["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_across_tokens_cancels_triton(
    client: TestClient, fake: FakeTritonClient, stream: bool
) -> None:
    r = client.post("/v1/chat/completions", json={**CHAT, "stop": ["pital of", "zzz"], "stream": stream})
    assert r.status_code == 200
    if stream:
        chunks = sse_events(r.text)
        text, finish = chat_text(chunks), chunks[-1]["choices"][0]["finish_reason"]
    else:
        choice = r.json()["choices"][0]
        text, finish = choice["message"]["content"], choice["finish_reason"]
    assert (text, finish) == ("Paris is the ca", "stop")
    cancelled = [s for s in fake.streams if s.ended_early]
    assert len(cancelled) == 1 and cancelled[0].sent_tokens == 5
    assert fake.active == 0
    _eventually(lambda: fake.aborted == [cancelled[0].request_id])


def test_unmatched_stop_prefix_is_released_at_the_end(client: TestClient) -> None:
    r = client.post("/v1/completions", json={**COMPLETION, "stop": "Done!?", "stream": True})
    chunks = sse_events(r.text)
    assert "".join(c["choices"][0]["text"] for c in chunks) == REPLY_TEXT
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_models_and_default_alias(client: TestClient) -> None:
    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["smol"]
    assert client.get("/v1/models/default").json()["id"] == "smol"
    for name in ("smol", "default"):
        assert client.post("/v1/completions", json={**COMPLETION, "model": name}).status_code == 200


def validate(shape: Any, body: Any) -> Any:
    """`body` has exactly the declared response shape (no missing, extra or mistyped keys)."""
    return TypeAdapter(shape).validate_python(body)


def _error(r: Any, status: int) -> dict:
    assert r.status_code == status, r.text
    body = validate(ErrorResponse, r.json())
    assert "Traceback" not in r.text
    return dict(body["error"])


CHAT_ERRORS = [
    ({**CHAT, "temperature": 2.5}, "temperature"),
    ({**CHAT, "temperature": "warm"}, "temperature"),
    ({**CHAT, "top_p": 0}, "top_p"),
    ({**CHAT, "top_p": 1.5}, "top_p"),
    ({**CHAT, "frequency_penalty": 3}, "frequency_penalty"),
    ({**CHAT, "presence_penalty": -2.5}, "presence_penalty"),
    ({**CHAT, "max_tokens": 0}, "max_tokens"),
    ({**CHAT, "max_tokens": "10"}, "max_tokens"),
    ({**CHAT, "max_tokens": 256}, "max_tokens"),
    ({**CHAT, "max_tokens": 4, "min_tokens": 5}, "min_tokens"),
    ({**CHAT, "n": 0}, "n"),
    ({**CHAT, "n": 17}, "n"),  # over --max-n (16)
    ({**CHAT, "n": 2, "best_of": 3}, "best_of"),
    ({**CHAT, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({**CHAT, "logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    ({**CHAT, "top_logprobs": 2}, "top_logprobs"),  # without logprobs: true
    ({**CHAT, "logprobs": False, "top_logprobs": 2}, "top_logprobs"),
    ({**CHAT, "logprobs": 2}, "logprobs"),  # chat's logprobs is a boolean
    ({**CHAT, "echo": True}, "echo"),  # completions only
    ({**CHAT, "prompt_logprobs": 21}, "prompt_logprobs"),
    ({**CHAT, "top_k": -2}, "top_k"),
    ({**CHAT, "min_p": 1.5}, "min_p"),
    ({**CHAT, "stream": "yes"}, "stream"),
    # Not honoured yet: refused unless at the value that changes nothing (never silently ignored).
    ({**CHAT, "logit_bias": {"42": 5}}, "logit_bias"),
    ({**CHAT, "response_format": {"type": "xml"}}, "response_format"),  # structured output: its own tests
    # Tools: their own tests (test_gateway_tools.py); a choice needs tools to choose from.
    ({**CHAT, "tool_choice": "required"}, "tool_choice"),
    ({**CHAT, "messages": []}, "messages"),
    ({**CHAT, "messages": [{"role": "user"}]}, "messages[0]"),
    ({**CHAT, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    (
        {**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        "messages[0].content[0]",
    ),
    ({**CHAT, "messages": [{"role": "user", "content": "word " * 300}]}, "messages"),  # over max_model_len
    ({k: v for k, v in CHAT.items() if k != "messages"}, "messages"),
]


@pytest.mark.parametrize(("body", "param"), CHAT_ERRORS)
def test_chat_bad_requests(client: TestClient, body: dict, param: str) -> None:
    err = _error(client.post("/v1/chat/completions", json=body), 400)
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200  # still serving


def test_neutral_values_of_unhonoured_fields_are_accepted(client: TestClient) -> None:
    body = {**CHAT, "logit_bias": {}, "response_format": {"type": "text"}, "tools": [], "tool_choice": "none",
            "parallel_tool_calls": True, "user": "u", "store": False}
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert client.post("/v1/completions", json={**COMPLETION, "suffix": ""}).status_code == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**COMPLETION, "prompt": ["a", "b"]}, "prompt"),
        ({**COMPLETION, "prompt": ""}, "prompt"),
        ({**COMPLETION, "prompt": "w " * 250}, "prompt"),
        ({**COMPLETION, "seed": 2**64}, "seed"),
        ({**COMPLETION, "stop": [""]}, "stop"),
        ({**COMPLETION, "logprobs": 21}, "logprobs"),
        ({**COMPLETION, "logprobs": True}, "logprobs"),  # completions' logprobs is a count
        ({**COMPLETION, "n": 17}, "n"),
        ({**COMPLETION, "best_of": 2}, "best_of"),  # n is 1
        ({**COMPLETION, "echo": "yes"}, "echo"),
        ({**COMPLETION, "suffix": "and then"}, "suffix"),
        (
            {**COMPLETION, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format.json_schema.schema",
        ),
    ],
)
def test_completion_bad_requests(client: TestClient, body: dict, param: str) -> None:
    assert _error(client.post("/v1/completions", json=body), 400)["param"] == param
    assert client.post("/v1/completions", json=COMPLETION).status_code == 200  # still serving


def test_malformed_json_and_non_object(client: TestClient) -> None:
    err = _error(client.post("/v1/chat/completions", content=b'{"model": '), 400)
    assert err["code"] == "invalid_json"
    assert _error(client.post("/v1/completions", content=b"[1, 2]"), 400)["code"] == "invalid_json"


def test_unknown_model_is_404(client: TestClient) -> None:
    err = _error(client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"}), 404)
    assert (err["type"], err["code"], err["param"]) == ("model_not_found", "model_not_found", "model")
    assert _error(client.get("/v1/models/gpt-9"), 404)["code"] == "model_not_found"


def test_unknown_route_and_method_use_the_envelope(client: TestClient) -> None:
    assert _error(client.get("/v1/nope"), 404)["code"] == "not_found"
    assert _error(client.get("/v1/chat/completions"), 405)["code"] == "method_not_allowed"


def test_overload_is_503(client: TestClient, fake: FakeTritonClient) -> None:
    fake.fail_with = Overloaded("the request queue is full (max 4)")
    err = _error(client.post("/v1/chat/completions", json=CHAT), 503)
    assert err["type"] == "server_error" and "queue is full" in err["message"]


@pytest.mark.parametrize(
    "exc",
    [
        EngineDead("worker 1 died: Traceback (most recent call last) ..."),
        EngineError("secret internal detail"),
    ],
)
def test_internal_errors_say_only_the_request_id(client: TestClient, fake: FakeTritonClient, exc) -> None:
    fake.fail_with = exc
    r = client.post("/v1/chat/completions", json=CHAT)
    err = _error(r, 500)
    assert err["type"] == "server_error"
    assert r.headers["x-request-id"] in err["message"]
    assert "secret" not in err["message"] and "worker" not in err["message"]


def test_triton_down_is_503(client: TestClient, fake: FakeTritonClient) -> None:
    fake.down = True
    assert _error(client.post("/v1/completions", json=COMPLETION), 503)["type"] == "server_error"
    assert client.get("/health").status_code == 503


def test_error_after_the_stream_started(client: TestClient, fake: FakeTritonClient) -> None:
    fake.fail_after = (3, EngineDead("rank 1 exited"))
    r = client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert r.status_code == 200
    events = sse_events(r.text)
    assert chat_text(events[:-1]) == "Paris is the"
    assert events[-1]["error"]["type"] == "server_error" and "rank" not in events[-1]["error"]["message"]
    # Not streamed: the same failure is a plain 500.
    _error(client.post("/v1/chat/completions", json=CHAT), 500)


def test_api_key(fake: FakeTritonClient) -> None:
    with _client(fake, api_key="s3cret") as c:
        assert _error(c.post("/v1/chat/completions", json=CHAT), 401)["code"] == "invalid_api_key"
        bad = {"Authorization": "Bearer nope"}
        assert c.get("/v1/models", headers=bad).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert c.post("/v1/chat/completions", json=CHAT, headers=ok).status_code == 200
        assert c.get("/health").status_code == 200  # health needs no key


def test_health(client: TestClient, fake: FakeTritonClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert fake.streams[-1].model == "llm_engine"  # the probe went through the engine
    fake.unready_models.add("llm_engine")
    assert "llm_engine" in _error(client.get("/health"), 503)["message"]
    assert client.get("/ready").status_code == 503
    fake.unready_models.clear()
    fake.server_ready = False
    assert client.get("/health").status_code == 503


def test_health_fails_when_the_engine_is_dead(fake: FakeTritonClient) -> None:
    with _client(fake, health_cache_s=0.0) as c:
        assert c.get("/health").status_code == 200
        fake.engine_alive = False
        assert "probe" in _error(c.get("/health"), 503)["message"]
        assert c.get("/ready").status_code == 200  # readiness alone does not probe


def test_reasoning_content_is_split(fake: FakeTritonClient) -> None:
    pieces = ((1, "<th"), (2, "ink>"), (3, "Two plus"), (4, " two.</thi"), (5, "nk>\n\n"), (6, "4"))
    fake.reply = pieces
    with _client(fake, reasoning_start="<think>", reasoning_end="</think>") as c:
        plain = c.post("/v1/chat/completions", json=CHAT).json()["choices"][0]
        assert plain["message"] == {
            "role": "assistant",
            "content": "\n\n4",
            "reasoning_content": "Two plus two.",
        }
        chunks = sse_events(c.post("/v1/chat/completions", json={**CHAT, "stream": True}).text)
        assert (
            "".join(ch["choices"][0]["delta"].get("reasoning_content", "") for ch in chunks)
            == "Two plus two."
        )
        assert chat_text(chunks) == "\n\n4"
        # Completions have no reasoning split.
        text = c.post("/v1/completions", json=COMPLETION).json()["choices"][0]["text"]
        assert text == "".join(t for _, t in pieces)


def test_stop_string_on_the_last_token_ends_normally(client: TestClient, fake: FakeTritonClient) -> None:
    r = client.post("/v1/completions", json={**COMPLETION, "stop": ["Done!"], "stream": True})
    chunks = sse_events(r.text)
    assert "".join(c["choices"][0]["text"] for c in chunks) == REPLY_TEXT[: -len("Done!")]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert not fake.streams[-1].cancelled and fake.streams[-1].completed and not fake.aborted


def test_recent_tokens_count_as_proof_of_life(fake: FakeTritonClient) -> None:
    with _client(fake, health_cache_s=30.0) as c:
        assert c.post("/v1/completions", json=COMPLETION).status_code == 200
        fake.engine_alive = False  # the probe would fail now, but tokens just flowed
        assert c.get("/health").status_code == 200
        assert not [s for s in fake.streams if s.model == "llm_engine"]


def test_backend_factory_wraps_the_local_ensemble(fake: FakeTritonClient) -> None:
    events: list[str] = []

    class Recording:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def open(self, req: Any, request_id: str) -> Any:
            events.append(f"open {json.loads(req.sampling)['max_tokens']}")
            return self.inner.open(req, request_id)

        async def check_ready(self, *args: Any) -> str | None:
            events.append("ready")
            return await self.inner.check_ready(*args)

        async def drain(self) -> None:
            events.append("drain")

    @contextlib.asynccontextmanager
    async def factory(local: Any) -> Any:
        events.append("start")
        yield Recording(local)
        events.append("stop")

    app = create_app(
        GatewaySettings(served_model_name="smol", max_model_len=256), client=fake, backend_factory=factory
    )
    with TestClient(app) as c:
        assert c.post("/v1/completions", json={**COMPLETION, "max_tokens": 4}).status_code == 200
        assert c.get("/health").status_code == 200
    assert events == ["start", "open 4", "ready", "drain", "stop"]
