"""The gateway's limits answer clearly in OpenAI's envelope: body size (413), messages count (400), concurrent
requests (429 + Retry-After) and the per-request deadline (504, or an SSE error chunk + [DONE] once a stream
has begun; the engine is told to abort either way)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import TypeAdapter

from gateway.app import create_app
from gateway.openai_schema import ErrorResponse
from gateway.settings import GatewaySettings
from tests.fakes.triton_client import FakeTritonClient
from tests.procs import UvicornThread

LONG_REPLY = tuple((1000 + i, f" w{i}") for i in range(200))
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 100}


def _client(fake: FakeTritonClient, **settings: Any) -> TestClient:
    return TestClient(create_app(GatewaySettings(max_model_len=1024, **settings), client=fake))


def _error(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert "Traceback" not in r.text
    return dict(TypeAdapter(ErrorResponse).validate_python(r.json())["error"])


def _eventually(cond: Any, timeout: float = 60.0) -> None:
    """Wait for cond(); the deadline only guards against a hang."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def _events(text: str) -> list[Any]:
    blocks = [b.removeprefix("data: ") for b in text.strip().split("\n\n")]
    return [b if b == "[DONE]" else json.loads(b) for b in blocks]


def test_body_over_the_limit_is_413_before_parsing() -> None:
    fake = FakeTritonClient()
    with _client(fake, max_request_body_bytes=1000) as c:
        small = {**CHAT, "max_tokens": 4, "user": "u" * 800}
        assert len(json.dumps(small)) < 1000
        assert c.post("/v1/chat/completions", json=small).status_code == 200
        big = {**small, "user": "u" * 1000}
        err = _error(c.post("/v1/chat/completions", json=big), 413)
        assert err["code"] == "request_too_large" and "1000 bytes" in err["message"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the bytes read are counted
            yield b'{"messages": [], "user": "'
            for _ in range(20):
                yield b"u" * 100
            yield b'"}'

        assert _error(c.post("/v1/completions", content=chunks()), 413)["code"] == "request_too_large"
        # Not even a bogus Content-Length gets past the count.
        headers = {"Content-Length": "10", "Content-Type": "application/json"}
        r = c.post("/v1/completions", content=json.dumps(big).encode()[:10], headers=headers)
        assert r.status_code == 400
    assert len([s for s in fake.streams if s.model == "ensemble"]) == 1


def test_too_many_messages_is_400_naming_messages() -> None:
    with _client(FakeTritonClient(), max_messages=3) as c:
        msgs = [{"role": "user", "content": f"m{i}"} for i in range(4)]
        err = _error(c.post("/v1/chat/completions", json={**CHAT, "messages": msgs}), 400)
        assert err["param"] == "messages" and "at most 3" in err["message"]
        assert c.post("/v1/chat/completions", json={**CHAT, "messages": msgs[:3]}).status_code == 200


def test_concurrent_requests_beyond_the_limit_get_429_with_retry_after() -> None:
    fake = FakeTritonClient(reply=LONG_REPLY, token_delay=0.01, max_model_len=1024)
    settings = GatewaySettings(max_model_len=1024, max_concurrent_streams=2)
    with UvicornThread(create_app(settings, client=fake)) as srv, httpx.Client(timeout=30) as http:
        url = f"http://127.0.0.1:{srv.port}/v1/chat/completions"
        # Errors before the stream never keep their slot.
        for _ in range(3):
            assert http.post(url, json={**CHAT, "temperature": 9}).status_code == 400
        finished: list[int] = []

        def plain() -> None:
            finished.append(http.post(url, json={**CHAT, "max_tokens": 60}).status_code)

        with http.stream("POST", url, json={**CHAT, "stream": True}) as streamed:
            assert streamed.status_code == 200
            lines = streamed.iter_lines()  # kept: a dropped iterator closes the response
            assert next(lines).startswith("data: ")  # the stream is live and holds its slot
            other = threading.Thread(target=plain)
            other.start()
            _eventually(lambda: len([s for s in fake.streams if s.model == "ensemble"]) == 2)
            r = http.post(url, json=CHAT)
            err = _error(r, 429)
            assert r.headers["retry-after"] == "1" and err["code"] == "rate_limit_exceeded"
            other.join(10)
            assert "data: [DONE]" in list(lines)
        assert finished == [200]
        # Both slots are free again: the closed stream's and the finished request's.
        _eventually(lambda: fake.active == 0)
        statuses: list[int] = []

        def short() -> None:
            statuses.append(http.post(url, json=CHAT).status_code)

        threads = [threading.Thread(target=short) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert statuses == [200, 200]


def test_no_limit_by_default() -> None:
    assert GatewaySettings().max_concurrent_streams == 0
    fake = FakeTritonClient(reply=LONG_REPLY, token_delay=0.005, max_model_len=1024)
    with UvicornThread(create_app(GatewaySettings(max_model_len=1024), client=fake)) as srv:
        url = f"http://127.0.0.1:{srv.port}/v1/chat/completions"
        statuses: list[int] = []

        def one() -> None:
            with httpx.Client(timeout=30) as http:
                statuses.append(http.post(url, json={**CHAT, "max_tokens": 20}).status_code)

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert statuses == [200] * 8


@pytest.mark.parametrize("delay", [0.05, 2.0])  # expires mid-generation / before the first token
def test_deadline_is_504_and_aborts_the_engine(delay: float) -> None:
    fake = FakeTritonClient(reply=LONG_REPLY, token_delay=delay, max_model_len=1024)
    with _client(fake, request_timeout_s=0.3) as c:
        r = c.post("/v1/chat/completions", json=CHAT)
        stream = [s for s in fake.streams if s.model == "ensemble"][-1]
        # The deadline answered, not the end of the reply (100 tokens, >= 5 s of the fake's sleeps).
        assert stream.sent_tokens < CHAT["max_tokens"]
        err = _error(r, 504)
        assert err["code"] == "request_timeout" and err["type"] == "server_error"
        assert r.headers["x-request-id"] in err["message"] and "0.3 s" in err["message"]
        _eventually(lambda: fake.aborted == [stream.request_id])
        _eventually(lambda: stream.ended_early)  # the abort ends it at the engine's next step
        assert stream.sent_tokens < CHAT["max_tokens"]


def test_deadline_ends_a_stream_with_an_error_chunk_and_done() -> None:
    fake = FakeTritonClient(reply=LONG_REPLY, token_delay=0.05, max_model_len=1024)
    with _client(fake, request_timeout_s=0.3) as c:
        r = c.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert r.status_code == 200
        events = _events(r.text)
        assert events[-1] == "[DONE]"
        error = TypeAdapter(ErrorResponse).validate_python(events[-2])["error"]
        assert error["code"] == "request_timeout"
        assert 1 <= len(events) - 2 < 20 and all("choices" in e for e in events[:-2])
        stream = [s for s in fake.streams if s.model == "ensemble"][-1]
        _eventually(lambda: fake.aborted == [stream.request_id])


def test_requests_within_the_deadline_are_untouched() -> None:
    fake = FakeTritonClient(max_model_len=1024)
    with _client(fake, request_timeout_s=30.0) as c:
        r = c.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "stop"
    assert not fake.aborted


def test_a_stream_whose_client_left_frees_its_slot() -> None:
    fake = FakeTritonClient(reply=LONG_REPLY, token_delay=0.01, max_model_len=1024)
    settings = GatewaySettings(max_model_len=1024, max_concurrent_streams=1)
    with UvicornThread(create_app(settings, client=fake)) as srv, httpx.Client(timeout=30) as http:
        url = f"http://127.0.0.1:{srv.port}/v1/chat/completions"
        with http.stream("POST", url, json={**CHAT, "stream": True}) as streamed:
            assert next(streamed.iter_lines()).startswith("data: ")  # then the client goes away
        _eventually(lambda: fake.active == 0)
        assert http.post(url, json={**CHAT, "max_tokens": 4}).status_code == 200


def test_deadline_aborts_every_choice_of_n() -> None:
    fake = FakeTritonClient(reply=LONG_REPLY, token_delay=0.05, max_model_len=1024)
    with _client(fake, request_timeout_s=0.3) as c:
        r = c.post("/v1/chat/completions", json={**CHAT, "n": 3})
        assert _error(r, 504)["code"] == "request_timeout"
        choices = [s for s in fake.streams if s.model == "ensemble"]
        assert len(choices) == 3
        _eventually(lambda: sorted(fake.aborted) == sorted(s.request_id for s in choices))
        _eventually(lambda: all(s.ended_early for s in choices))
