"""A real engine under the launcher (issue 14): a tiny random llama with tensor parallelism 2.

- schemathesis over /openapi.json (a second stack, TP=1 and a 256-token context, so that no generation runs
  long), every check, a bounded number of examples: no failure and no 5xx against the real tokenizer,
  engine and detokenizer;

- a rank worker, then the llm_engine stub, then tritonserver SIGKILLed mid-stream: each time the stream ends
  with an error chunk and [DONE] within 5 s, /health is not 200 while the launcher restarts tritonserver, the
  first request afterwards succeeds;
- the llm_engine stub SIGSTOPped mid-stream (a wedged engine: every process alive, no step ever finishes):
  the launcher's watchdog calls it wedged after --engine-step-timeout and restarts it the same way;
- the four restarts are counted in /metrics by cause; after a SIGTERM no process of the stack is left, nor
  anything of the killed engines in /dev/shm.
The times from kill to healthy are printed (pytest -s).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway.test_launcher_e2e import _alive
from tests.gateway.test_openapi_conformance import run_schemathesis
from tests.metrics.stack import Stack, running_stack
from tests.procs import descendants, shm_regions

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
STEP_TIMEOUT_S = 3.0
MAX_EXAMPLES = 15  # per operation and phase: the real engine answers each in milliseconds
MAX_MODEL_LEN = 4096
SHORT_MODEL_LEN = 256
LONG = {"model": "default", "prompt": "Once upon a time", "max_tokens": 3500, "ignore_eos": True}
LONG["stream"] = True


@pytest.fixture(scope="module")
def stack(tiny_checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("supervision-real") / "run"
    flags = ("--tensor-parallel-size", "2", "--max-model-len", str(MAX_MODEL_LEN), "--block-size", "16")
    flags += ("--engine-step-timeout", str(STEP_TIMEOUT_S), "--max-engine-restarts", "6")
    with running_stack(tiny_checkpoint("llama"), run_dir, extra=flags) as st:
        yield st


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _engine_stub(st: Stack) -> int:
    mine = str(st.run_dir).encode() + b"/model_repository/llm_engine/"
    stubs = [p for p in descendants(st.proc.pid) if mine in _cmdline(p)]
    assert len(stubs) == 1, stubs
    return stubs[0]


def _tritonserver(st: Stack) -> int:
    mine = f"--model-repository={st.run_dir}/model_repository".encode()
    (pid,) = [p for p in descendants(st.proc.pid) if mine in _cmdline(p) and b"tritonserver" in _cmdline(p)]
    return pid


def _rank_worker(st: Stack) -> int:
    """One of the stub's rank worker processes (with TP=2 the stub drives one per rank)."""
    ranks = [p for p in descendants(_engine_stub(st)) if b"spawn_main" in _cmdline(p)]
    assert len(ranks) == 2, ranks
    return max(ranks)


def _stream_then(c: httpx.Client, act) -> tuple[list[str], float, float]:
    """Start a long stream, call `act()` after its first chunk; the rest of the stream and the times."""
    with c.stream("POST", "/v1/completions", json=LONG) as r:
        assert r.status_code == 200
        lines = (line for line in r.iter_lines() if line)
        assert next(lines).startswith("data: {")
        t0 = time.monotonic()
        act()
        rest = list(lines)
        return rest, t0, time.monotonic()


def _recovered(c: httpx.Client, since: float, st: Stack, restart: int) -> float:
    """Once the launcher says it restarts, poll /health until 200 (it must be non-200 at least once); then the
    first request must succeed. (The engine itself may end the stream before the launcher notices the death,
    and /health trusts tokens seen within the last second, so polling starts at the launcher's word.)"""
    said = f"restarting tritonserver (restart {restart})"
    while said not in "\n".join(st.lines):
        assert time.monotonic() - since < 60, f"the launcher never said {said!r}"
        time.sleep(0.05)
    unhealthy = False
    while time.monotonic() - since < 120:
        if c.get("/health").status_code == 200:
            break
        unhealthy = True
        time.sleep(0.1)
    else:
        raise AssertionError("the stack did not become healthy again within 120 s")
    took = time.monotonic() - since
    assert unhealthy, "/health never reported the engine away"
    # The gateway can see the new server ready a moment before the launcher's own poll does: the next kill
    # must not land inside the launcher's restart (it would count as a failed restart, not a new death).
    back = f"(restart {restart})"
    while not any("engine back after" in line and back in line for line in st.lines):
        assert time.monotonic() - since < 120, f"the launcher never said the engine was back {back}"
        time.sleep(0.05)
    r = c.post("/v1/completions", json={"model": "default", "prompt": "Hello", "max_tokens": 4})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 4
    return took


def _ends_with_error(rest: list[str]) -> None:
    assert rest[-1] == "data: [DONE]", rest[-3:]
    error = json.loads(rest[-2][len("data: ") :])["error"]
    assert error["type"] == "server_error", error


@pytest.fixture(scope="module")
def short_stack(tiny_checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A context of 256 tokens: a request without max_tokens generates for at most that long."""
    run_dir = tmp_path_factory.mktemp("schemathesis-real") / "run"
    flags = ("--max-model-len", str(SHORT_MODEL_LEN), "--block-size", "16")
    with running_stack(tiny_checkpoint("llama"), run_dir, extra=flags) as st:
        yield st


@pytest.mark.timeout(1500)  # 443 s on the 2-core box at load ~10; above run_schemathesis' own 1200 s
def test_schemathesis_against_the_real_model(short_stack: Stack, tmp_path: Path) -> None:
    """Every check but one: "all" includes not_a_server_error (any 5xx fails the run). Left out here is
    positive_data_acceptance: its coverage phase sends max_tokens at the schema's maximum (max_model_len - 1)
    with a prompt of several tokens, which a real tokenizer rightly rejects (prompt + max_tokens exceeds the
    context, a sum no schema can state; the hooks do not run in that phase). The run over the fake Triton
    client, whose prompts are one token, keeps that check."""
    run = run_schemathesis(
        short_stack.url,
        tmp_path,
        None,
        MAX_EXAMPLES,
        max_tokens_cap=4,
        max_model_len=SHORT_MODEL_LEN,
        exclude_checks=("positive_data_acceptance",),
    )
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]


def test_dead_or_wedged_engine_is_restarted(stack: Stack) -> None:
    family = descendants(stack.proc.pid)
    shm_before = set(os.listdir("/dev/shm"))
    regions = shm_regions(family)  # the python backend's regions are named in its stubs' command lines
    assert regions and regions <= shm_before
    try:
        with httpx.Client(base_url=stack.url, timeout=60) as c:
            rank = _rank_worker(stack)
            rest, t0, ended = _stream_then(c, lambda: os.kill(rank, signal.SIGKILL))
            assert ended - t0 < 5, f"the stream took {ended - t0:.1f}s to end after the rank died"
            _ends_with_error(rest)
            took = _recovered(c, t0, stack, 1)
            print(f"\nrank worker killed: stream ended after {ended - t0:.2f}s, healthy after {took:.1f}s")

            for n, (what, victim) in enumerate((("stub", _engine_stub), ("tritonserver", _tritonserver)), 2):
                family |= descendants(stack.proc.pid)
                regions |= shm_regions(family)
                pid = victim(stack)
                rest, t0, ended = _stream_then(c, lambda pid=pid: os.kill(pid, signal.SIGKILL))
                assert ended - t0 < 5, f"the stream took {ended - t0:.1f}s to end after the {what} died"
                _ends_with_error(rest)
                took = _recovered(c, t0, stack, n)
                print(f"{what} killed: stream ended after {ended - t0:.2f}s, healthy after {took:.1f}s")

            family |= descendants(stack.proc.pid)
            regions |= shm_regions(family)
            stub = _engine_stub(stack)
            rest, t0, ended = _stream_then(c, lambda: os.kill(stub, signal.SIGSTOP))
            # Wedged once no step finished for STEP_TIMEOUT_S; the watchdog looks every second, then kills
            # tritonserver's tree (typically 4-5 s in all; 9 s seen on a 2-core box busy with other tests).
            assert ended - t0 < STEP_TIMEOUT_S + 10, f"the wedged stream took {ended - t0:.1f}s to end"
            _ends_with_error(rest)
            took = _recovered(c, t0, stack, 4)
            print(f"stub stopped: stream ended after {ended - t0:.2f}s, healthy after {took:.1f}s")
            family |= descendants(stack.proc.pid)
            regions |= shm_regions(family)

        log = "\n".join(stack.lines)
        assert "an llm_engine process died (a rank worker" in log
        assert "an llm_engine process died (the stub" in log
        assert "tritonserver exited" in log
        assert "the engine is wedged: no step finished" in log
        page = stack.scrape()
        restarts = "paddlellm:engine_restarts_total"
        assert page.value(restarts, cause="rank_died") == 1
        assert page.value(restarts, cause="engine_wedged") == 1
        assert page.value(restarts, cause="engine_died") == 1
        assert page.value(restarts, cause="tritonserver_died") == 1
    except Exception as e:
        said = [line for line in stack.lines if "[launcher] model " not in line]  # not per-model progress
        raise AssertionError("launcher output:\n" + "\n".join(said[-80:])) from e
    regions |= shm_regions(descendants(stack.proc.pid))
    stack.proc.send_signal(signal.SIGTERM)
    assert stack.proc.wait(90) == 0
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in family) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in family if _alive(p)]
    # Killed stubs, ranks and their resource trackers leave neither the python backend's regions nor the
    # all-reduce segment behind, from the first start or the restarts (other stacks on the box are not ours).
    now = set(os.listdir("/dev/shm"))
    left = {n for n in now - shm_before if n.startswith("pdllm_ar_")} | (regions & now)
    assert not left, f"left in /dev/shm: {sorted(left)}"
