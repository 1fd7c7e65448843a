"""The adapters inside a real tritonserver: the rendered model repository (real config.pbtxt files) with the
test models in tests/triton/e2e_models (real adapter classes, fake executor, toy text), over gRPC streams."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from paddlellm import protocol as p
from paddlellm import tritonenv
from paddlellm.config import EngineConfig
from paddlellm.triton.adapter import ABORT_PARAMETER
from paddlellm.triton.render import engine_params, render_model_repository
from tests.triton.conftest import MODEL_REPOSITORY

pytestmark = pytest.mark.e2e
grpcclient = pytest.importorskip("tritonclient.grpc.aio")
from tritonclient.grpc import InferInput  # noqa: E402

E2E_MODELS = Path(__file__).parent / "e2e_models"
MAX_MODEL_LEN = 4096
READY_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    wheel = tritonenv.find_pytriton_wheel()
    if wheel is None:
        pytest.skip("nvidia-pytriton (tritonserver) is not installed")
    tmp = tmp_path_factory.mktemp("triton")
    tritonenv.install_backend_dir(wheel, tmp / "backends")
    install = tritonenv.locate(backend_root=tmp / "backends")
    probe = subprocess.run(
        [os.path.join(install.env["PATH"], "python3"), "-I", "-c", "import paddlellm"], cwd="/", check=False
    )
    if probe.returncode != 0:
        pytest.skip("the stub cannot import paddlellm: run scripts/setup_triton.sh")
    params = engine_params(EngineConfig(max_model_len=MAX_MODEL_LEN, block_size=16))
    repo = render_model_repository(MODEL_REPOSITORY, tmp / "repo", params)
    for name in ("tokenizer", "llm_engine", "detokenizer"):
        shutil.copy(E2E_MODELS / f"{name}.py", repo / name / "1" / "model.py")
    grpc_port, http_port = _free_port(), _free_port()
    log = open(tmp / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        install.command(
            repo,
            f"--grpc-port={grpc_port}",
            f"--http-port={http_port}",
            "--allow-metrics=false",
            "--exit-on-error=true",
            "--disable-auto-complete-config",
            "--exit-timeout-secs=5",
        ),
        env=install.launch_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its stubs share the group, so one killpg stops everything
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                tail = (tmp / "server.log").read_text()[-4000:]
                pytest.fail(f"tritonserver exited with {proc.returncode}:\n{tail}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("tritonserver did not become ready")
                time.sleep(0.1)
        yield f"127.0.0.1:{grpc_port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        log.close()
    # Every request must have ended inside Triton: a cancelled ensemble left in flight (see the detokenizer's
    # cancellation note) would show here and hold shutdown for --exit-timeout-secs.
    log_text = (tmp / "server.log").read_text()
    stuck = re.findall(r"Model '\w+' \(version \d+\) has \d+ in-flight inferences", log_text)
    assert not stuck, stuck


def _str(name: str, value: str) -> InferInput:
    t = InferInput(name, [1], "BYTES")
    t.set_data_from_numpy(np.array([value.encode()], dtype=np.object_))
    return t


def _ensemble_inputs(prompt: str, **sampling: Any) -> list[InferInput]:
    return [_str(p.PROMPT, prompt), _str(p.MESSAGES, ""), _str(p.SAMPLING, json.dumps(sampling))]


def _engine_inputs(ids: list[int], sampling: str) -> list[InferInput]:
    t = InferInput(p.INPUT_IDS, [len(ids)], "INT32")
    t.set_data_from_numpy(np.asarray(ids, np.int32))
    return [t, _str(p.SAMPLING, sampling)]


class Stream:
    """One request on its own gRPC stream, as the gateway does it."""

    def __init__(
        self, url: str, model: str, inputs: list[InferInput], request_id: str, **params: Any
    ) -> None:
        self.client = grpcclient.InferenceServerClient(url)

        async def one() -> Any:
            yield {
                "model_name": model,
                "inputs": inputs,
                "request_id": request_id,
                "parameters": {"triton_enable_empty_final_response": True, **params},
            }

        self.call = self.client.stream_infer(one())

    async def next(self) -> tuple[dict[str, Any] | None, str | None, bool]:
        """(outputs, error message, final)"""
        result, error = await self.call.__anext__()
        if error is not None:
            return None, str(error), True
        resp = result.get_response()
        outs = {o.name: result.as_numpy(o.name) for o in resp.outputs}
        return outs, None, resp.parameters["triton_final_response"].bool_param

    async def drain(self, timeout: float = 30.0) -> tuple[list[dict[str, Any]], str | None]:
        outs: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while True:
                out, err, final = await self.next()
                if err is not None:
                    return outs, err
                if out:
                    outs.append(out)
                if final:
                    return outs, None

    async def close(self) -> None:
        self.call.cancel()
        await self.client.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_ensemble_streams_one_response_per_token(server: str) -> None:
    async def go() -> None:
        s = Stream(server, p.ENSEMBLE.name, _ensemble_inputs("hello", max_tokens=6, ignore_eos=True), "s1")
        outs, err = await s.drain()
        await s.close()
        assert err is None
        assert len(outs) == 6  # the empty FINAL response is not counted
        ids = [int(o[p.TOKEN_IDS][0]) for o in outs]
        text = "".join(o[p.TEXT_OUTPUT][0].decode() for o in outs)
        assert text == "".join(f"<{t}>" for t in ids)
        assert [int(o[p.COMPLETION_TOKENS][0]) for o in outs] == [1, 2, 3, 4, 5, 6]
        assert {int(o[p.PROMPT_TOKENS][0]) for o in outs} == {5}
        assert [o[p.FINISH_REASON][0] for o in outs] == [b""] * 5 + [b"length"]
        assert set(json.loads(outs[-1][p.ENGINE_STATS][0])) >= {"ttft_s", "e2e_s"}

    run(go())


@pytest.mark.parametrize(
    ("prompt", "sampling", "param"),
    [("x" * 100, {"max_tokens": MAX_MODEL_LEN}, "prompt"), ("hi", {"temperature": 9}, "temperature")],
)
def test_validation_errors_reach_the_client_typed(server: str, prompt: str, sampling: dict, param: str):
    async def go() -> None:
        s = Stream(server, p.ENSEMBLE.name, _ensemble_inputs(prompt, **sampling), uuid.uuid4().hex)
        outs, err = await s.drain()
        await s.close()
        assert outs == [] and err is not None
        parsed = p.parse_error(err)
        assert type(parsed).__name__ == "InvalidRequest" and parsed.param == param, err
        assert "Traceback" not in err and "At:" not in err

    run(go())


async def _wait_engine_free(url: str, request_id: str, timeout: float = 10.0) -> float:
    """Seconds until the engine accepts `request_id` again, i.e. the earlier request with it was aborted."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        s = Stream(url, p.LLM_ENGINE.name, _engine_inputs([5, 6], '{"max_tokens":1}'), request_id)
        outs, err = await s.drain()
        await s.close()
        if err is None:
            return time.monotonic() - start
        assert "already in use" in err, err
        await asyncio.sleep(0.02)
    raise AssertionError(f"request {request_id} is still running in the engine after {timeout}s")


def test_ensemble_cancel_reaches_the_engine(server: str) -> None:
    async def go() -> float:
        rid = uuid.uuid4().hex
        s = Stream(server, p.ENSEMBLE.name, _ensemble_inputs("long", max_tokens=1000, ignore_eos=True), rid)
        for _ in range(3):
            out, err, _ = await s.next()
            assert err is None and out
        await s.close()  # as the gateway does when its client disconnects
        return await _wait_engine_free(server, rid)

    freed = run(go())
    print(f"ensemble cancel freed the engine request in {freed:.3f}s")
    assert freed < 5.0  # 1000 steps would take 20 s


def test_direct_engine_cancel_is_polled(server: str) -> None:
    async def go() -> float:
        rid = uuid.uuid4().hex
        sampling = json.dumps({"max_tokens": 1000, "ignore_eos": True})
        s = Stream(server, p.LLM_ENGINE.name, _engine_inputs([7, 8, 9], sampling), rid)
        for _ in range(2):
            out, err, _ = await s.next()
            assert err is None and out
        await s.close()
        return await _wait_engine_free(server, rid)

    freed = run(go())
    print(f"direct cancel freed the engine request in {freed:.3f}s")
    assert freed < 5.0


def test_abort_request_ends_a_live_stream(server: str) -> None:
    async def go() -> None:
        rid = uuid.uuid4().hex
        s = Stream(server, p.ENSEMBLE.name, _ensemble_inputs("abc", max_tokens=1000, ignore_eos=True), rid)
        out, err, _ = await s.next()
        assert err is None
        abort = Stream(server, p.LLM_ENGINE.name, _engine_inputs([], ""), rid, **{ABORT_PARAMETER: True})
        assert await abort.drain() == ([], None)  # the abort request itself: FINAL only
        await abort.close()
        outs, err = await s.drain()
        await s.close()
        assert err is None and outs[-1][p.FINISH_REASON][0] == b"abort"

    run(go())
