"""The whole stack with the default model, started by the launcher: the `openai` client, streamed equals
non-streamed (Chinese and emoji included), bad requests, and 32 concurrent streams of which 8 disconnect
(their engine requests must be aborted, the others unaffected). Slow: the engine loads in ~30 s."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from launcher.tritonenv import TritonNotFound, locate
from paddlellm import protocol
from tests.procs import follow_until_ready, free_port, stop_process

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SEED_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "List 3 countries and their capitals."},
]


class Stack:
    def __init__(self, proc: subprocess.Popen, port: int, run_dir: Path) -> None:
        self.proc, self.port, self.run_dir = proc, port, run_dir
        self.url = f"http://127.0.0.1:{port}"
        self.lines: list[str] = []

    def endpoints(self) -> dict:
        return json.loads((self.run_dir / "endpoints.json").read_text())


@pytest.fixture(scope="module")
def stack(default_model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    try:
        locate()
    except TritonNotFound as e:
        pytest.skip(f"tritonserver not set up: {e}")
    run_dir = tmp_path_factory.mktemp("stack") / "run"
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "gateway.api_server",
        "--model",
        default_model_dir,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        "1024",
        "--block-size",
        "16",
        "--max-num-seqs",
        "32",
        "--run-dir",
        str(run_dir),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    st = Stack(proc, port, run_dir)
    if not follow_until_ready(proc, st.lines, 600):
        proc.kill()
        pytest.fail("the stack did not get ready:\n" + "\n".join(st.lines[-40:]))
    try:
        yield st
    finally:
        stop_process(proc)


def test_seed_examples_with_the_openai_client(stack: Stack) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=stack.url + "/v1", api_key="null")
    chat = client.chat.completions.create(
        model="default", messages=SEED_MESSAGES, max_tokens=80, temperature=0
    )
    answer = chat.choices[0].message.content
    capitals = [
        "Paris",
        "London",
        "Tokyo",
        "Berlin",
        "Beijing",
        "Washington",
        "Rome",
        "Madrid",
        "Ottawa",
        "Canberra",
        "New Delhi",
        "Moscow",
        "Brasília",
        "Brasilia",
        "Cairo",
        "Mexico City",
    ]
    assert sum(c in answer for c in capitals) >= 2, answer
    history = [
        *SEED_MESSAGES,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And one more?"},
    ]
    stream = client.chat.completions.create(model="default", messages=history, max_tokens=20, stream=True)
    chunks = [c for c in stream if c.choices]
    assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length")
    comp = client.completions.create(
        model="default", prompt="The capital of France is", max_tokens=5, temperature=0
    )
    assert "Paris" in comp.choices[0].text


@pytest.mark.parametrize(
    "content", ["Say hello in Chinese and end with an emoji.", "写一句关于猫的话，加上表情符号🐱"]
)
def test_streamed_equals_non_streamed(stack: Stack, content: str) -> None:
    body = {
        "model": "default",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 40,
        "temperature": 0,
    }
    with httpx.Client(base_url=stack.url, timeout=120) as c:
        plain = c.post("/v1/chat/completions", json=body).json()["choices"][0]
        r = c.post("/v1/chat/completions", json={**body, "stream": True})
        # Stream interval 3: the engine sends the first token, then 3 per response (and the rest at the end).
        r3 = c.post("/v1/chat/completions", json={**body, "stream": True, "max_streaming_response_tokens": 3})
    for resp in (r, r3):
        events = [json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: {")]
        assert resp.text.rstrip().endswith("data: [DONE]")
        streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
        assert streamed == plain["message"]["content"]
        assert [i for e in events for i in e["choices"][0]["delta"]["token_ids"]] == plain["token_ids"]
    sizes = [n for e in events if (n := len(e["choices"][0]["delta"]["token_ids"]))]
    assert sizes[0] == 1 and set(sizes[1:-1]) <= {3} and sizes[-1] <= 3, sizes


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "temperature": 3},
            400,
            "temperature",
        ),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_p": 0}, 400, "top_p"),
        ("/v1/completions", {"prompt": "hi", "presence_penalty": -9}, 400, "presence_penalty"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": "many"}, 400, "max_tokens"),
        ("/v1/completions", {"prompt": "word " * 1100}, 400, "prompt"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x " * 1100}]}, 400, "messages"),
        ("/v1/completions", {"prompt": "hi", "model": "gpt-4"}, 404, "model"),
    ],
)
def test_bad_requests_then_still_serving(
    stack: Stack, path: str, body: dict, status: int, param: str
) -> None:
    with httpx.Client(base_url=stack.url, timeout=120) as c:
        r = c.post(path, json={"model": "default", **body})
        assert r.status_code == status, r.text
        assert r.json()["error"]["param"] == param
        assert (
            c.post("/v1/completions", json={"model": "default", "prompt": "hi", "max_tokens": 2}).status_code
            == 200
        )


async def _engine_accepts(grpc_url: str, request_id: str) -> bool:
    """True when the engine has no live request with this id (a duplicate id is refused while it is live)."""
    from tritonclient.grpc import InferInput
    from tritonclient.grpc.aio import InferenceServerClient

    ids = InferInput(protocol.INPUT_IDS, [2], "INT32")
    ids.set_data_from_numpy(np.array([5, 6], dtype=np.int32))
    sampling = InferInput(protocol.SAMPLING, [1], "BYTES")
    sampling.set_data_from_numpy(np.array([b'{"max_tokens":1}'], dtype=np.object_))
    resume = InferInput(protocol.RESUME_IDS, [0], "INT32")
    resume.set_data_from_numpy(np.zeros([0], dtype=np.int32))

    async def one():
        yield {
            "model_name": "llm_engine",
            "inputs": [ids, sampling, resume],
            "request_id": request_id,
            "parameters": {"triton_enable_empty_final_response": True},
        }

    async with InferenceServerClient(grpc_url) as client:
        async for result, error in client.stream_infer(one()):
            if error is not None:
                assert "already in use" in str(error), error
                return False
            if result.get_response().parameters["triton_final_response"].bool_param:
                return True
    return True


def test_32_concurrent_streams_8_disconnect(stack: Stack) -> None:
    async def run() -> tuple[list, list[str]]:
        async def one(c: httpx.AsyncClient, i: int) -> tuple[str, object]:
            body = {
                "model": "default",
                "prompt": f"Tell story number {i}:",
                "max_tokens": 24,
                "stream": True,
                "ignore_eos": True,
            }
            async with c.stream("POST", "/v1/completions", json=body) as r:
                n, finish, rid = 0, None, ""
                async for line in r.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    event = json.loads(line[6:])
                    assert "error" not in event, event
                    rid = event["id"]
                    n += len(event["choices"][0]["token_ids"])
                    finish = event["choices"][0]["finish_reason"] or finish
                    if i < 8 and n >= 2:
                        return "dropped", rid
            return finish, n

        async with httpx.AsyncClient(
            base_url=stack.url, timeout=600, limits=httpx.Limits(max_connections=64)
        ) as c:
            results = await asyncio.gather(*[one(c, i) for i in range(32)])
        dropped = [rid for kind, rid in results if kind == "dropped"]
        return [r for r in results if r[0] != "dropped"], dropped

    finished, dropped = asyncio.run(run())
    assert len(dropped) == 8
    assert finished == [("length", 24)] * 24
    grpc_url = stack.endpoints()["triton_grpc"]
    deadline = time.monotonic() + 20
    pending = set(dropped)
    while pending:
        pending = {rid for rid in pending if not asyncio.run(_engine_accepts(grpc_url, rid))}
        assert time.monotonic() < deadline, f"engine still runs disconnected requests {pending}"
        time.sleep(0.1)
