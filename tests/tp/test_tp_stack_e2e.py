"""The whole stack with --tensor-parallel-size 2 (launcher, tritonserver, gateway) on a tiny checkpoint:
two servers side by side on one host, then kill -9 of one server's rank: its in-flight stream ends with
an error and /health fails within 5 s, while the other server keeps serving."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from launcher.tritonenv import TritonNotFound, locate
from paddlellm.worker.shm_allreduce import SEGMENT_PREFIX
from tests.procs import free_port, stop_process

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e, pytest.mark.slow]


class Stack:
    def __init__(self, model: str, run_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.lines: list[str] = []
        self.ready = threading.Event()
        argv = [sys.executable, "-m", "gateway.api_server", "--model", model, "--host", "127.0.0.1",
                "--port", str(self.port), "--tensor-parallel-size", "2", "--max-model-len", "2048",
                "--block-size", "16", "--num-gpu-blocks-override", "256", "--run-dir", str(run_dir)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if "[launcher] ready" in line:
                self.ready.set()

    def wait_ready(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.is_set():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the stack did not get ready:\n" + "\n".join(self.lines[-40:]))
            time.sleep(0.2)

    def ranks(self) -> list[int]:
        """The TP rank processes: spawn children somewhere below this launcher."""
        kids: dict[int, list[int]] = {}
        cmd: dict[int, str] = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
                cmd[int(d)] = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            kids.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(d))
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            for k in kids.get(pid, []):
                todo.append(k)
                if "spawn_main" in cmd.get(k, "") and "resource_tracker" not in cmd.get(k, ""):
                    found.append(k)
        return sorted(found)

    def health(self) -> int:
        try:
            return httpx.get(self.url + "/health", timeout=5).status_code
        except httpx.HTTPError:
            return 0

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture(scope="module")
def stacks(tiny_checkpoint, tmp_path_factory: pytest.TempPathFactory):
    try:
        locate()
    except TritonNotFound as e:
        pytest.skip(f"tritonserver not set up: {e}")
    model = tiny_checkpoint(arch="llama", tokenizer="llama2", seed=5)
    root = tmp_path_factory.mktemp("tp_stacks")
    segments_before = _allreduce_segments()
    pair = [Stack(model, root / "a"), Stack(model, root / "b")]
    try:
        for s in pair:
            s.wait_ready()
        yield pair
    finally:
        for s in pair:
            s.stop()
    # The killed rank's engine is restarted, and the stop may catch the new one before its ranks attached
    # (the only time an all-reduce segment still has a name): the launcher removes it.
    left = _allreduce_segments() - segments_before
    assert not left, f"left in /dev/shm: {sorted(left)}"


def _allreduce_segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith(SEGMENT_PREFIX)}


def _complete(s: Stack, max_tokens: int = 12) -> dict:
    body = {"model": "default", "prompt": "The quick brown fox", "max_tokens": max_tokens, "temperature": 0}
    r = httpx.post(s.url + "/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def test_two_tp2_servers_side_by_side(stacks: list[Stack]) -> None:
    a, b = stacks
    ra, rb = a.ranks(), b.ranks()
    assert len(ra) == 2 and len(rb) == 2 and not set(ra) & set(rb)
    out_a, out_b = _complete(a), _complete(b)
    assert out_a["text"] == out_b["text"] and len(out_a["token_ids"]) == 12
    assert a.health() == 200 and b.health() == 200


def test_kill_a_rank_mid_stream(stacks: list[Stack]) -> None:
    a, b = stacks
    body = {"model": "default", "prompt": "Once upon a time", "max_tokens": 1900, "temperature": 0,
            "stream": True}
    events: list[str] = []
    first = threading.Event()
    done = threading.Event()

    def consume() -> None:
        try:
            with httpx.stream("POST", a.url + "/v1/completions", json=body, timeout=60) as r:
                events.append(f"status {r.status_code}")
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:])
                        first.set()
        except httpx.HTTPError as e:
            events.append(f"transport error {e}")
        finally:
            first.set()
            done.set()

    threading.Thread(target=consume, daemon=True).start()
    assert first.wait(60)
    os.kill(a.ranks()[1], signal.SIGKILL)
    killed = time.monotonic()
    assert done.wait(30), "the in-flight stream hung after a rank died"
    errors = [e for e in events if e.startswith("{") and "error" in json.loads(e)]
    assert events[-1] == "[DONE]" and errors, events[-3:]
    assert not any(json.loads(e).get("choices", [{}])[0].get("finish_reason") in ("stop", "length")
                   for e in events if e.startswith("{") and "choices" in json.loads(e))
    while a.health() == 200:
        assert time.monotonic() - killed < 5.0, "/health still says healthy 5 s after a rank died"
        time.sleep(0.2)
    assert a.health() != 200  # and it stays unhealthy
    assert _complete(b)["text"] and b.health() == 200  # the neighbour is unaffected
