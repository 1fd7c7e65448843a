"""Image content parts through the gateway (issue #29 part 2a) against the fake Triton client: what reaches
the ensemble's `messages` (the parts, in order, data URLs as sent; text-only messages as strings, as ever),
every refusal a 400 naming `messages[i].content[j]` before anything is sent, streamed or not, the tokenizer's
own image errors passed on with their part, allowed http(s) image URLs fetched (no redirects, a deadline, a
byte limit, an image type) and sent on as data URLs, /openapi.json stating the shapes these settings take."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import TypeAdapter

from gateway.app import create_app
from gateway.openai_schema import ChatCompletion, ErrorResponse
from gateway.settings import GatewaySettings
from paddlellm import protocol
from paddlellm.errors import InvalidRequest
from tests.fakes.triton_client import FakeTritonClient

PNG = base64.b64decode(  # a 1x1 PNG: the gateway never decodes it (the tokenizer does)
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()
MM = {"enable_mm": True, "limit_mm_per_prompt": 2}


def image(url: str = DATA_URL, **extra: Any) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, **extra}}


def chat(*parts: Any, stream: bool = False, history: bool = False) -> dict[str, Any]:
    content = [p if isinstance(p, dict) else {"type": "text", "text": p} for p in parts]
    messages = [{"role": "system", "content": "Be brief."}] if history else []
    return {
        "model": "default",
        "messages": [*messages, {"role": "user", "content": content}],
        "max_tokens": 5,
        "stream": stream,
    }


Handler = Callable[[httpx.Request], Any]


def make_client(
    fake: FakeTritonClient, handler: Handler | None = None, **settings: Any
) -> Iterator[TestClient]:
    transport = httpx.MockTransport(handler) if handler is not None else None
    app = create_app(
        GatewaySettings(served_model_name="vl", max_model_len=256, **settings),
        client=fake,
        media_transport=transport,
    )
    with TestClient(app) as c:
        yield c


@pytest.fixture
def fake() -> FakeTritonClient:
    return FakeTritonClient(max_model_len=256)


@pytest.fixture
def client(fake: FakeTritonClient) -> Iterator[TestClient]:
    yield from make_client(fake, **MM)


@pytest.fixture
def text_only(fake: FakeTritonClient) -> Iterator[TestClient]:
    yield from make_client(fake)


def sent_messages(fake: FakeTritonClient) -> list[dict[str, Any]]:
    stream = [s for s in fake.streams if s.model == "ensemble"][-1]
    return json.loads(stream.inputs[protocol.MESSAGES])


def error(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/json")  # before any stream: a plain 400
    return dict(TypeAdapter(ErrorResponse).validate_python(r.json())["error"])


def still_serving(c: TestClient) -> None:
    r = c.post("/v1/chat/completions", json=chat("hello"))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("stream", [False, True])
def test_image_parts_reach_the_tokenizer_in_order(client: TestClient, fake: FakeTritonClient, stream) -> None:
    body = chat("What is", image(), "and", image(detail="auto"), stream=stream, history=True)
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    if not stream:
        TypeAdapter(ChatCompletion).validate_python(r.json())
    system, user = sent_messages(fake)
    assert system == {"role": "system", "content": "Be brief."}  # text-only: one string, as before
    assert user["content"] == [
        {"type": "text", "text": "What is"},
        {"type": "image_url", "image_url": {"url": DATA_URL}},
        {"type": "text", "text": "and"},
        {"type": "image_url", "image_url": {"url": DATA_URL}},
    ]


def test_text_parts_alone_stay_one_string(client: TestClient, fake: FakeTritonClient) -> None:
    assert client.post("/v1/chat/completions", json=chat("a", "b")).status_code == 200
    assert sent_messages(fake)[-1]["content"] == "ab"


JPEG_URL = "data:image/jpeg;base64,/9j/4AAQ"
BAD: list[tuple[dict[str, Any], str, str]] = [
    (chat("x", image("data:image/png;base64")), "messages[0].content[1]", "no ','"),
    (chat("x", image("data:image/png;base64,@@@")), "messages[0].content[1]", "malformed base64"),
    (chat("x", image("data:image/png;base64,AAA")), "messages[0].content[1]", "malformed base64"),
    (chat(image("data:image/gif;base64,R0lGODlh")), "messages[0].content[0]", "unsupported image media type"),
    (chat(image("data:text/plain;base64,AAAA")), "messages[0].content[0]", "unsupported image media type"),
    (chat(image("data:image/png,rawdata")), "messages[0].content[0]", "base64-encoded"),
    (chat(image("data:image/png;base64,")), "messages[0].content[0]", "empty"),
    (chat(image("file:///etc/passwd")), "messages[0].content[0]", "data:' URL"),
    (chat(image("https://example.com/cat.png")), "messages[0].content[0]", "--allowed-media-domains"),
    (chat(image(), image(JPEG_URL), image()), "messages[0].content[2]", "at most 2"),
    (chat(image(), "x", image(JPEG_URL), "y", image()), "messages[0].content[4]", "--limit-mm-per-prompt"),
    (chat({"type": "image_url", "image_url": {}}), "messages[0].content[0].image_url.url", "image_url.url"),
    (chat(image(detail="low")), "messages[0].content[0].image_url.detail", ""),
    (chat({"type": "image_url"}), "messages[0].content[0]", "needs 'image_url'"),
    (chat({"type": "input_audio", "input_audio": {}}), "messages[0].content[0]", "not supported"),
    (chat({"type": "image_url", "image_url": "https://x/y.png"}), "messages[0].content[0].image_url", ""),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("body", "param", "needle"), BAD, ids=[f"{p}:{n}" for _, p, n in BAD])
def test_bad_image_parts_are_400s_naming_the_part(
    client: TestClient, fake: FakeTritonClient, body, param, needle, stream
) -> None:
    err = error(client.post("/v1/chat/completions", json={**body, "stream": stream}))
    assert err["param"] == param and needle in err["message"], err
    assert err["type"] == "invalid_request_error"
    assert not [s for s in fake.streams if s.model == "ensemble"]  # refused before Triton
    still_serving(client)


def test_the_limit_counts_images_across_messages(client: TestClient) -> None:
    body = chat(image(), history=True)
    body["messages"].insert(1, {"role": "user", "content": [image(), {"type": "text", "text": "x"}]})
    body["messages"].insert(2, {"role": "assistant", "content": "ok"})
    body["messages"][-1]["content"].append(image())
    err = error(client.post("/v1/chat/completions", json=body))
    assert err["param"] == "messages[3].content[1]"


@pytest.mark.parametrize("stream", [False, True])
def test_without_enable_mm_an_image_part_is_refused_naming_it(text_only: TestClient, stream) -> None:
    err = error(text_only.post("/v1/chat/completions", json=chat("x", image(), stream=stream, history=True)))
    assert err["param"] == "messages[1].content[1]" and "--enable-mm" in err["message"]
    still_serving(text_only)


def test_an_oversized_data_url_is_refused_before_decoding(fake: FakeTritonClient) -> None:
    for c in make_client(fake, max_image_bytes=1000, **MM):
        big = "data:image/png;base64," + base64.b64encode(b"\0" * 2000).decode()
        err = error(c.post("/v1/chat/completions", json=chat(image(big))))
        assert err["param"] == "messages[0].content[0]" and "limit of 1000 bytes" in err["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_the_tokenizers_image_errors_come_back_naming_the_part(
    client: TestClient, fake: FakeTritonClient, stream
) -> None:
    """A decodable-looking image the tokenizer refuses (a decompression bomb, a corrupt file): its error
    text names the part (paddlellm/vision), and the client gets that 400, streamed or not."""
    fake.fail_with = InvalidRequest(
        "image of 100000x100000 pixels exceeds the limit of 50000000 pixels", param="messages[0].content[1]"
    )
    err = error(client.post("/v1/chat/completions", json=chat("x", image(), stream=stream)))
    assert err["param"] == "messages[0].content[1]" and "exceeds the limit" in err["message"]
    fake.fail_with = None
    still_serving(client)


# ------------------------------------------------------------------------------------------ fetching


def serve(status: int = 200, content_type: str = "image/png", body: bytes = PNG, **headers: str) -> Handler:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(status, headers={"content-type": content_type, **headers}, content=body)

    handler.seen = seen  # type: ignore[attr-defined]
    return handler


ALLOWED = {**MM, "allowed_media_domains": ("img.example",)}


def test_an_allowed_image_url_is_fetched_and_sent_as_a_data_url(fake: FakeTritonClient) -> None:
    handler = serve(content_type="image/png; charset=binary")
    for c in make_client(fake, handler, **ALLOWED):
        r = c.post("/v1/chat/completions", json=chat("x", image("https://img.example/cat.png"), image()))
        assert r.status_code == 200, r.text
    assert handler.seen == ["https://img.example/cat.png"]  # type: ignore[attr-defined]
    parts = sent_messages(fake)[0]["content"]
    assert parts[1]["image_url"]["url"] == DATA_URL and parts[2]["image_url"]["url"] == DATA_URL


@pytest.mark.parametrize(
    ("handler", "url", "needle"),
    [
        (serve(404), "https://img.example/x.png", "HTTP 404"),
        (serve(302, location="https://evil.example/x.png"), "https://img.example/x.png", "HTTP 302"),
        (serve(content_type="text/html"), "https://img.example/x.png", "not a PNG, JPEG or WebP"),
        (serve(body=b"\0" * 5000), "https://img.example/x.png", "limit of 4096 bytes"),
        (serve(body=b""), "https://img.example/x.png", "no data"),
        (serve(), "https://evil.example/x.png", "--allowed-media-domains"),
        (serve(), "http://img.example.evil.example/x.png", "--allowed-media-domains"),
    ],
)
def test_fetch_failures_are_400s_naming_the_part(fake: FakeTritonClient, handler, url, needle) -> None:
    for c in make_client(fake, handler, max_image_bytes=4096, **ALLOWED):
        err = error(c.post("/v1/chat/completions", json=chat("x", image(url))))
        assert err["param"] == "messages[0].content[1]" and needle in err["message"], err
        still_serving(c)
    if "evil" in url:
        assert handler.seen == []  # type: ignore[attr-defined]  # a host not allowed is never asked


def test_a_slow_image_url_times_out(fake: FakeTritonClient) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, content=PNG)

    for c in make_client(fake, slow, media_fetch_timeout_s=0.2, **ALLOWED):
        err = error(c.post("/v1/chat/completions", json=chat(image("https://img.example/x.png"))))
        assert err["param"] == "messages[0].content[0]" and "longer than 0.2 s" in err["message"]


def test_star_allows_any_host(fake: FakeTritonClient) -> None:
    for c in make_client(fake, serve(), **{**MM, "allowed_media_domains": ("*",)}):
        r = c.post("/v1/chat/completions", json=chat(image("http://anything.example/a.png")))
        assert r.status_code == 200, r.text


# ------------------------------------------------------------------------------------------ document


def content_part_schema(c: TestClient) -> dict[str, Any]:
    return c.get("/openapi.json").json()["components"]["schemas"]["ContentPart"]


def test_openapi_states_the_part_shapes_these_settings_take(fake: FakeTritonClient) -> None:
    for c in make_client(fake):
        text = content_part_schema(c)
        assert text["properties"]["type"] == {"const": "text"} and "anyOf" not in text
    for c in make_client(fake, **MM):
        text_branch, image_branch = content_part_schema(c)["anyOf"]
        assert image_branch["properties"]["type"] == {"const": "image_url"}
        url = image_branch["properties"]["image_url"]["properties"]["url"]
        assert url["pattern"].startswith("^data:image/(png|jpeg|webp);base64,")
        assert re.fullmatch(url["pattern"].strip("^$"), DATA_URL)
        assert not re.fullmatch(url["pattern"].strip("^$"), "data:image/png;base64,AAA")
    for c in make_client(fake, **ALLOWED):
        _, image_branch = content_part_schema(c)["anyOf"]
        assert "https?" in image_branch["properties"]["image_url"]["properties"]["url"]["pattern"]


def test_schemathesis_finds_no_mismatch_with_images_on(tmp_path) -> None:
    """/openapi.json with --enable-mm states what the server takes (the per-request image count aside, which
    no schema can state across messages: a limit the generated requests stay under)."""
    from tests.gateway.test_openapi_conformance import run_schemathesis
    from tests.procs import UvicornThread

    settings = GatewaySettings(
        served_model_name="smol",
        max_model_len=64,
        api_key="k",
        max_messages=8,
        max_concurrent_streams=64,
        enable_mm=True,
        limit_mm_per_prompt=10_000,
    )
    with UvicornThread(create_app(settings, client=FakeTritonClient(max_model_len=10**9))) as srv:
        run = run_schemathesis(f"http://127.0.0.1:{srv.port}", tmp_path, "k", 25)
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
