"""Running a real tritonserver for tests: start on free ports, wait for READY, always stop (the whole
process group), and check that no request was left in flight. Plus a one-request gRPC stream client, as
the gateway uses."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient
from tritonclient.grpc import InferInput

from launcher import tritonenv
from paddlellm import protocol as p
from tests.procs import descendants, free_port, shm_regions  # noqa: F401 - free_port re-exported for this folder's tests


def triton_install(tmp: Path) -> tritonenv.TritonInstall:
    """A backend dir of our own under tmp; skips the test when Triton or the stub's imports are missing."""
    wheel = tritonenv.find_pytriton_wheel()
    if wheel is None:
        pytest.skip("nvidia-pytriton (tritonserver) is not installed")
    tritonenv.install_backend_dir(wheel, tmp / "backends")
    install = tritonenv.locate(backend_root=tmp / "backends")
    probe = subprocess.run(
        [os.path.join(install.env["PATH"], "python3"), "-I", "-c", "import paddlellm"],
        cwd="/",
        check=False,
        capture_output=True,
        text=True,
    )
    if "No module named 'paddlellm'" in probe.stderr:  # the stub's interpreter was not pointed at us
        pytest.skip("the stub cannot import paddlellm: run scripts/setup_triton.sh")
    # Any other import error is our package broken: a failure, not a skip.
    assert probe.returncode == 0, f"the stub's python cannot import paddlellm:\n{probe.stderr[-3000:]}"
    return install


@contextmanager
def running_tritonserver(
    repo: Path, tmp: Path, ready_timeout_s: float = 60.0, extra_env: dict[str, str] | None = None
) -> Iterator[str]:
    """Yields the gRPC address. On exit asserts no request stayed in flight inside Triton (a cancelled
    ensemble left in flight would show there and hold shutdown for --exit-timeout-secs)."""
    install = triton_install(tmp)
    grpc_port, http_port = free_port(), free_port()
    log_path = tmp / "server.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed below
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
        env=install.launch_env() | (extra_env or {}),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its stubs share the group, so one killpg stops everything
    )
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tritonserver exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"tritonserver not ready in {ready_timeout_s}s:\n{log_path.read_text()[-4000:]}"
                    )
                time.sleep(0.1)
        yield f"127.0.0.1:{grpc_port}"
    finally:
        # A stub still unloading when the exit timeout ends is killed below and leaves its shared memory (the
        # launcher unlinks its stubs' regions; this fixture runs tritonserver without it).
        regions = shm_regions(descendants(proc.pid))
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
        for name in regions:
            Path("/dev/shm", name).unlink(missing_ok=True)
    # Triton reports what is still in flight once a second while it shuts down ("Timeout N: ..." then one line
    # per busy model). A request that was finishing as the test ended shows in the first report only; a leaked
    # one (e.g. a cancelled ensemble that never completes) is still there in the last.
    reports = re.split(r'"Timeout \d+: ', log_path.read_text())
    stuck = re.findall(r"Model '\w+' \(version \d+\) has \d+ in-flight inferences", reports[-1])
    assert not stuck, stuck


def str_input(name: str, value: str) -> InferInput:
    t = InferInput(name, [1], "BYTES")
    t.set_data_from_numpy(np.array([value.encode()], dtype=np.object_))
    return t


def ids_input(name: str, ids: Sequence[int]) -> InferInput:
    t = InferInput(name, [len(ids)], "INT32")
    t.set_data_from_numpy(np.asarray(ids, np.int32).reshape(len(ids)))
    return t


def ensemble_inputs(
    prompt: str = "",
    messages: list[dict[str, Any]] | None = None,
    resume_ids: Sequence[int] = (),
    **sampling: Any,
):
    messages_json = "" if messages is None else json.dumps(messages)
    sampling_json = json.dumps(sampling)
    return [
        str_input(p.PROMPT, prompt),
        str_input(p.MESSAGES, messages_json),
        str_input(p.SAMPLING, sampling_json),
        ids_input(p.RESUME_IDS, resume_ids),
    ]


def engine_inputs(ids: list[int], sampling: str, resume_ids: Sequence[int] = ()) -> list[InferInput]:
    return [ids_input(p.INPUT_IDS, ids), str_input(p.SAMPLING, sampling), ids_input(p.RESUME_IDS, resume_ids)]


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


async def wait_engine_free(url: str, request_id: str, timeout: float = 10.0) -> float:
    """Seconds until the engine accepts `request_id` again, i.e. the earlier request with it was aborted."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        s = Stream(url, p.LLM_ENGINE.name, engine_inputs([5, 6], '{"max_tokens":1}'), request_id)
        outs, err = await s.drain()
        await s.close()
        if err is None:
            return time.monotonic() - start
        assert "already in use" in err, err
        await asyncio.sleep(0.02)
    raise AssertionError(f"request {request_id} is still running in the engine after {timeout}s")
