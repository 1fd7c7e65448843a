"""A dead engine comes back (issue 14): the launcher on the toy models (test_launcher_e2e.py's harness), the
llm_engine stub SIGKILLed mid-stream, then tritonserver, then the stub again with a restart budget of 3 and
an engine that now dies at every start.

- the live stream ends with an error chunk and [DONE] within 5 s of the kill;
- while the engine is away /health is not 200 and a new request gets 503 with Retry-After;
- the first request after recovery succeeds; the time from kill to healthy is printed (pytest -s);
- the third restart fails (the engine dies while loading), which is the fourth death and exceeds
  --max-engine-restarts 3: the launcher exits with code 3 naming the cause, and no process is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.gateway.test_launcher_e2e import Stack, _alive, _launch
from tests.procs import descendants

pytestmark = pytest.mark.e2e


def _engine_stub(stack: Stack) -> int:
    for pid in descendants(stack.proc.pid):
        try:
            if b"/llm_engine/" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    raise AssertionError("no llm_engine stub under the launcher")


def _tritonserver(stack: Stack) -> int:
    for pid in descendants(stack.proc.pid):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "tritonserver":
                return pid
        except OSError:
            continue
    raise AssertionError("no tritonserver under the launcher")


def _stream_then_kill(c: httpx.Client, pid: int) -> tuple[list[str], float, float]:
    """Start a long stream, SIGKILL `pid` after its first chunk; the rest of the stream and the times."""
    body = {"model": "default", "prompt": "y" * 600, "max_tokens": 600, "stream": True}  # ~12 s undisturbed
    with c.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        lines = (line for line in r.iter_lines() if line)
        assert next(lines).startswith("data: {")
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        rest = list(lines)
        return rest, killed, time.monotonic()


def _wait_healthy(c: httpx.Client, since: float) -> tuple[float, bool, httpx.Response | None]:
    """Poll until /health is 200; returns (seconds since `since`, whether a non-200 was seen, the first
    generation answer seen while unhealthy)."""
    unhealthy, during = False, None
    while time.monotonic() - since < 90:
        if c.get("/health").status_code == 200:
            return time.monotonic() - since, unhealthy, during
        unhealthy = True
        if during is None:
            during = c.post("/v1/completions", json={"model": "default", "prompt": "q", "max_tokens": 2})
        time.sleep(0.1)
    raise AssertionError("the stack did not become healthy again within 90 s")


def test_dead_engine_is_restarted_then_a_crash_loop_exits(tmp_path: Path) -> None:
    flags = ("--max-model-len", "2048", "--max-engine-restarts", "3", "--engine-restart-window", "600")
    st = _launch(tmp_path, *flags)
    try:
        with httpx.Client(base_url=st.url, timeout=30) as c:
            for round_, victim in enumerate((_engine_stub, _tritonserver)):
                rest, killed, ended = _stream_then_kill(c, victim(st))
                log = "\n".join([*rest[-3:], *st.lines[-15:]])
                assert ended - killed < 5, f"the stream took {ended - killed:.1f}s to end:\n{log}"
                assert rest[-1] == "data: [DONE]"
                error = json.loads(rest[-2][len("data: ") :])["error"]
                assert error["type"] == "server_error", error
                took, unhealthy, during = _wait_healthy(c, killed)
                assert unhealthy, "/health never reported the dead engine"
                if during is not None and during.status_code == 503:
                    assert during.headers.get("Retry-After") == "1"
                    assert during.json()["error"]["code"] in ("overloaded", "not_ready")
                print(f"\n{victim.__name__} killed: healthy again after {took:.1f}s")
                r = c.post("/v1/completions", json={"model": "default", "prompt": "z", "max_tokens": 3})
                assert r.status_code == 200 and r.json()["choices"][0]["text"] == "ech"
                assert f"restarting tritonserver (restart {round_ + 1})" in "\n".join(st.lines)
            family = descendants(st.proc.pid)
            (tmp_path / "die-at-start").touch()  # beside TOY_ENGINE_LOG: each new engine dies in initialize
            victim = _engine_stub(st)
            st.lines.append(f"[test] killing {victim}")
            os.kill(victim, signal.SIGKILL)
            try:
                code = st.proc.wait(60)
            except subprocess.TimeoutExpired:
                code = None
            assert code == 3, "\n".join(st.lines[-30:])
    except Exception as e:
        raise AssertionError("launcher output:\n" + "\n".join(st.lines[-30:])) from e
    finally:
        if st.proc.poll() is None:  # a failure: stop it as a user would, so nothing is left behind
            st.proc.send_signal(signal.SIGTERM)
            try:
                st.proc.wait(60)
            except subprocess.TimeoutExpired:
                st.proc.kill()
                st.proc.wait()
    time.sleep(0.5)  # the harness's reader thread takes the last lines
    log = "\n".join(st.lines)
    assert "an llm_engine process died (the stub" in log and "restarting tritonserver (restart 3)" in log
    assert "crash loop: the restart failed (tritonserver exited" in log, log[-3000:]
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in family) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in family if _alive(p)]
