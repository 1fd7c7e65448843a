"""A client that goes away cancels its Triton stream: at the ASGI level (both spec versions) and through a
real uvicorn server on a loopback port."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.fakes.triton_client import FakeTritonClient
from tests.procs import UvicornThread

LONG_REPLY = tuple((1000 + i, f" w{i}") for i in range(200))
BODY = {"model": "default", "messages": [{"role": "user", "content": "talk"}], "max_tokens": 200}


def _fake(delay: float = 0.01) -> FakeTritonClient:
    return FakeTritonClient(reply=LONG_REPLY, token_delay=delay, max_model_len=1024)


async def _drive(
    app: Any, body: dict, disconnect_after: int, spec_version: str, disconnect_in: float | None = None
) -> list[dict]:
    """POST body to the app; the client disconnects after `disconnect_after` non-empty body messages, or
    `disconnect_in` seconds."""
    gone = asyncio.Event()
    if disconnect_in is not None:
        asyncio.get_running_loop().call_later(disconnect_in, gone.set)
    sent: list[dict] = []
    requested = False

    async def receive() -> dict:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if gone.is_set():
            raise OSError("client disconnected")  # what uvicorn does
        sent.append(message)
        if disconnect_in is None and sum(1 for m in sent if m.get("body")) >= disconnect_after:
            gone.set()

    path = "/v1/chat/completions"
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": spec_version},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
    }
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(app(scope, receive, send), 10)
    return sent


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
def test_stream_disconnect_cancels_triton(spec_version: str) -> None:
    fake = _fake()
    app = create_app(GatewaySettings(), client=fake)
    sent = asyncio.run(_drive(app, {**BODY, "stream": True}, disconnect_after=3, spec_version=spec_version))
    assert sent[0]["status"] == 200
    stream = [s for s in fake.streams if s.model == "ensemble"][-1]
    assert stream.ended_early
    assert 3 <= stream.sent_tokens < 20
    assert fake.active == 0
    assert fake.aborted == [stream.request_id]  # the engine is told directly (Triton does not pass it on)


def test_non_streamed_disconnect_cancels_triton() -> None:
    fake = _fake(delay=0.005)
    app = create_app(GatewaySettings(), client=fake)

    sent = asyncio.run(_drive(app, BODY, disconnect_after=0, spec_version="2.4", disconnect_in=0.05))
    assert sent == []  # nothing could be sent to a client that is gone
    stream = [s for s in fake.streams if s.model == "ensemble"][-1]
    assert stream.ended_early and 1 <= stream.sent_tokens < 100
    assert fake.aborted == [stream.request_id]


def test_real_uvicorn_disconnects_mid_stream_and_others_finish() -> None:
    fake = _fake(delay=0.01)
    with UvicornThread(create_app(GatewaySettings(), client=fake)) as srv:
        url = f"http://127.0.0.1:{srv.port}/v1/chat/completions"
        results: dict[int, str] = {}

        def full(i: int) -> None:
            with httpx.Client(timeout=30) as c:
                results[i] = c.post(url, json={**BODY, "max_tokens": 30, "stream": True}).text

        threads = [threading.Thread(target=full, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        with httpx.Client(timeout=30) as c, c.stream("POST", url, json={**BODY, "stream": True}) as r:
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert got[0].startswith("data: ")
        for t in threads:
            t.join(30)
        deadline = time.monotonic() + 5
        while fake.active and time.monotonic() < deadline:
            time.sleep(0.02)
        cancelled = [s for s in fake.streams if s.ended_early]
        assert len(cancelled) == 1 and cancelled[0].sent_tokens < 100
        while not fake.aborted and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fake.aborted == [cancelled[0].request_id]
        assert all(text.endswith("data: [DONE]\n\n") for text in results.values()) and len(results) == 3
        assert fake.active == 0


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_aborts_every_choice_of_n(stream: bool) -> None:
    fake = _fake(delay=0.005)
    app = create_app(GatewaySettings(), client=fake)
    body = {**BODY, "n": 3, "stream": stream}
    disconnect_in = None if stream else 0.1
    asyncio.run(_drive(app, body, disconnect_after=3, spec_version="2.4", disconnect_in=disconnect_in))
    choices = [s for s in fake.streams if s.model == "ensemble"]
    assert len(choices) == 3 and all(s.ended_early and s.sent_tokens < 100 for s in choices)
    assert sorted(fake.aborted) == sorted(s.request_id for s in choices)
    assert fake.active == 0
