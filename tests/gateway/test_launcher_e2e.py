"""The launcher and gateway against a real tritonserver, with character-level toy models (toy_models/) in the
real model repository's configs: start-up, the OpenAI client, errors from inside Triton, disconnects that
reach the engine, and a SIGTERM that leaves no process behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from launcher.tritonenv import TritonNotFound, locate
from tests.procs import descendants, follow_until_ready, free_port

ROOT = Path(__file__).resolve().parents[2]
TOYS = Path(__file__).resolve().parent / "toy_models"
pytestmark = pytest.mark.e2e


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Stack:
    def __init__(self, proc: subprocess.Popen, port: int, engine_log: Path) -> None:
        self.proc, self.port, self.engine_log = proc, port, engine_log
        self.lines: list[str] = []
        self.url = f"http://127.0.0.1:{port}"
        self.run_dir = engine_log.parent / "run"

    def aborts(self) -> list[str]:
        return self.engine_log.read_text().split() if self.engine_log.exists() else []


def _launch(tmp: Path, *extra: str) -> Stack:
    """Start the launcher on the toy models; returns once it prints that it is ready."""
    try:
        locate()
    except TritonNotFound as e:
        pytest.skip(f"tritonserver not set up: {e}")
    template = tmp / "template"
    for name in ("tokenizer", "llm_engine", "detokenizer", "ensemble"):
        (template / name / "1").mkdir(parents=True)
        shutil.copy(ROOT / "model_repository" / name / "config.pbtxt", template / name / "config.pbtxt")
        if name != "ensemble":
            shutil.copy(TOYS / f"{name}.py", template / name / "1" / "model.py")
    model = tmp / "toy-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    port = free_port()
    env = {**os.environ, "TOY_ENGINE_LOG": str(tmp / "engine.log"), "PYTHONUNBUFFERED": "1"}
    argv = [
        sys.executable,
        "-m",
        "gateway.api_server",
        "--model",
        str(model),
        "--model-repository",
        str(template),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        "256",
        "--run-dir",
        str(tmp / "run"),
        *extra,
    ]
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    st = Stack(proc, port, tmp / "engine.log")
    if not follow_until_ready(proc, st.lines, 120):
        proc.kill()
        proc.wait()
        pytest.fail("launcher did not get ready:\n" + "\n".join(st.lines))
    return st


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    st = _launch(tmp_path_factory.mktemp("launcher"), "--workers", "2")
    try:
        yield st
    finally:
        if st.proc.poll() is None:
            st.proc.kill()
            st.proc.wait()


def test_progress_lines(stack: Stack) -> None:
    text = "\n".join(stack.lines)
    for model in ("tokenizer", "llm_engine", "detokenizer", "ensemble"):
        assert f"model {model}: loaded at" in text and f"model {model}: READY" in text
    assert "all models ready" in text


def test_endpoints_file_names_triton_ports(stack: Stack) -> None:
    endpoints = json.loads((stack.run_dir / "endpoints.json").read_text())
    assert endpoints["openai"] == f"http://127.0.0.1:{stack.port}/v1"
    r = httpx.get(endpoints["triton_metrics"], timeout=10)
    assert r.status_code == 200 and "nv_inference_request_success" in r.text
    r = httpx.get(f"http://{endpoints['triton_http']}/v2/models/ensemble/ready", timeout=10)
    assert r.status_code == 200


def test_openai_client_chat_and_completions(stack: Stack) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=stack.url + "/v1", api_key="unused")
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "ok"},
    ]
    chat = client.chat.completions.create(model="default", messages=messages, max_tokens=100)
    assert chat.choices[0].message.content == "echo: sys\nhi\nyo\nok"
    assert chat.choices[0].finish_reason == "stop"
    assert chat.usage.completion_tokens == len("echo: sys\nhi\nyo\nok")
    stream = client.chat.completions.create(
        model="toy-model",
        messages=messages,
        max_tokens=100,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == chat.choices[0].message.content
    )
    assert chunks[-1].usage.total_tokens == chat.usage.total_tokens
    comp = client.completions.create(model="default", prompt="abc", max_tokens=5)
    assert (comp.choices[0].text, comp.choices[0].finish_reason) == ("echo:", "length")
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model="default", prompt="abc", max_tokens=5, stream=True)
    )
    assert streamed == "echo:"


def test_errors_from_inside_triton_keep_their_param(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url, timeout=30) as c:
        r = c.post("/v1/completions", json={"model": "default", "prompt": "x" * 300})
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "prompt" and "max_model_len" in r.json()["error"]["message"]
        r = c.post(
            "/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]}
        )
        assert r.status_code == 404
        assert c.get("/health").json() == {"status": "ok"}


def test_disconnect_reaches_the_engine(stack: Stack) -> None:
    body = {"model": "default", "prompt": "y" * 200, "max_tokens": 50, "stream": True}
    with httpx.Client(base_url=stack.url, timeout=30) as c:
        with c.stream("POST", "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            first = next(lines)
            assert first.startswith("data: ")
            request_id = json.loads(first[len("data: ") :])["id"]
        deadline = time.monotonic() + 10
        while request_id not in stack.aborts():
            assert time.monotonic() < deadline, f"engine never saw the abort: {stack.aborts()}"
            time.sleep(0.05)
        # The stack keeps serving.
        r = c.post("/v1/completions", json={"model": "default", "prompt": "z", "max_tokens": 3})
        assert r.json()["choices"][0]["text"] == "ech"


def test_sigterm_stops_everything(stack: Stack) -> None:
    family = descendants(stack.proc.pid)
    assert len(family) >= 3  # tritonserver, its stubs, uvicorn and its workers
    stack.proc.send_signal(signal.SIGTERM)
    assert stack.proc.wait(60) == 0
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in family) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in family if _alive(p)]
    assert "[launcher] stopped" in "\n".join(stack.lines)


def test_global_scheduler_through_the_launcher(tmp_path: Path) -> None:
    redis = shutil.which("redis-server")
    if redis is None:
        pytest.skip("redis-server is not installed")
    redis_port = free_port()
    server = subprocess.Popen(
        [redis, "--port", str(redis_port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        st = _launch(
            tmp_path, "--workers", "2", "--scheduler-name", "global", "--scheduler-port", str(redis_port)
        )
        try:
            with httpx.Client(base_url=st.url, timeout=30) as c:
                for prompt in ("ab", "cd", "ef"):
                    r = c.post(
                        "/v1/completions", json={"model": "default", "prompt": prompt, "max_tokens": 20}
                    )
                    assert r.json()["choices"][0]["text"] == f"echo: {prompt}"
                events = c.post(
                    "/v1/completions", json={"model": "default", "prompt": "gh", "stream": True}
                ).text
                assert events.endswith("data: [DONE]\n\n") and '"text":"g"' in events
        finally:
            st.proc.send_signal(signal.SIGTERM)
            assert st.proc.wait(60) == 0
    finally:
        server.terminate()
        server.wait(10)
