"""A deterministic fake engine and a real redis-server on a free loopback port, for the scheduler tests."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

from gateway.global_scheduler import Chunk, WorkRequest
from paddlellm.errors import EngineDead, InvalidRequest
from tests.procs import free_port  # noqa: F401 - re-exported for this folder's tests


def expected_ids(prompt: str, n: int) -> list[int]:
    """The fake engine's greedy answer: a function of the prompt only, so every executor agrees."""
    h = zlib.crc32(prompt.encode())
    return [(h + 7919 * i) % 50000 for i in range(n)]


def text_of(ids: list[int] | tuple[int, ...]) -> str:
    return "".join(f"<{i}>" for i in ids)


class FakeLocalEngine:
    """Yields one token per `delay` seconds; continues from `resume_token_ids` like the real engine must."""

    def __init__(self, delay: float = 0.005, fail_after: int | None = None) -> None:
        self.delay = delay
        self.runs = 0
        self.cancelled = 0
        # With fail_after: this engine "dies" after that many tokens of any prompt starting with "flaky".
        self.fail_after = fail_after

    async def run(self, request: WorkRequest) -> AsyncIterator[Chunk]:
        prompt = request.inputs.prompt
        if prompt == "bad":
            raise InvalidRequest("prompt 'bad' is not allowed", param="prompt")
        sampling = json.loads(request.inputs.sampling or "{}")
        n = int(sampling.get("max_tokens", 16))
        ids = expected_ids(prompt, n)
        self.runs += 1
        done = len(request.resume_token_ids)
        assert list(request.resume_token_ids) == ids[:done], "resume ids must be a prefix of the answer"
        try:
            for i in range(done, n):
                await asyncio.sleep(self.delay)
                if self.fail_after is not None and prompt.startswith("flaky") and i - done == self.fail_after:
                    raise EngineDead("the engine is not running: fake failure")
                yield Chunk(
                    text=text_of([ids[i]]),
                    token_ids=(ids[i],),
                    finish_reason="length" if i == n - 1 else "",
                    prompt_tokens=len(prompt.split()),
                    completion_tokens=i + 1,
                )
        except (GeneratorExit, asyncio.CancelledError):
            self.cancelled += 1
            raise


class RedisServer:
    """redis-server without persistence in a temp dir; stop() and start() again on the same port."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server")
        self.binary, self.workdir, self.port = binary, workdir, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.workdir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


def subprocess_env() -> dict[str, str]:
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    return env
