"""Acceptance on the real stack: launchers (tritonserver + gateway) with the character-level toy models of
tests/gateway/toy_models (20 ms per token), under the global scheduler on a real redis-server.

A and B share topic "t", C is on topic "other"; every request goes to A. Where each request ran is read from
each instance's scheduler counters on its gateway's /metrics (runs started under a confirmed lease; Triton's
ensemble count would also include an in-process start that Redis withdrew).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from gs_fakes import RedisServer, free_port

from launcher.tritonenv import TritonNotFound, locate
from tests.procs import descendants, shm_regions

ROOT = Path(__file__).resolve().parents[2]
TOYS = ROOT / "tests" / "gateway" / "toy_models"
pytestmark = pytest.mark.e2e
N = 40


class Instance:
    def __init__(self, tmp: Path, redis_port: int, topic: str, *extra: str) -> None:
        template = tmp / "template"
        for name in ("tokenizer", "llm_engine", "detokenizer", "ensemble"):
            (template / name / "1").mkdir(parents=True)
            shutil.copy(ROOT / "model_repository" / name / "config.pbtxt", template / name / "config.pbtxt")
            if name != "ensemble":
                shutil.copy(TOYS / f"{name}.py", template / name / "1" / "model.py")
        model = tmp / "toy-model"
        model.mkdir()
        (model / "config.json").write_text("{}")
        self.port = free_port()
        self.run_dir = tmp / "run"
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
            str(self.port),
            "--max-model-len",
            "256",
            "--run-dir",
            str(self.run_dir),
            "--max-num-seqs",
            "2",
            "--scheduler-name",
            "global",
            "--scheduler-port",
            str(redis_port),
            "--scheduler-topic",
            topic,
            "--scheduler-min-load-score",
            "1",
            *extra,
        ]
        self.engine_log = tmp / "engine.log"  # the toy engine notes resumed requests here
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOY_ENGINE_LOG": str(self.engine_log)}
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if "[launcher] ready" in line:
                self.ready.set()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 180
        while not self.ready.is_set():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail("launcher did not get ready:\n" + "\n".join(self.lines[-40:]))
            time.sleep(0.1)

    def ensemble_done(self) -> int:
        import json

        url = json.loads((self.run_dir / "endpoints.json").read_text())["triton_metrics"]
        text = httpx.get(url, timeout=10).text
        m = re.search(r'nv_inference_request_success\{model="ensemble",version="1"\} (\d+)', text)
        return int(m.group(1)) if m else 0

    def events(self) -> dict[str, int]:
        """This instance's `paddlellm:global_scheduler_events_total` counters, by event."""
        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=10).text
        pattern = r'^paddlellm:global_scheduler_events_total\{event="(\w+)"\} ([0-9.e+]+)$'
        return {m.group(1): int(float(m.group(2))) for m in re.finditer(pattern, text, re.M)}

    def kill(self) -> None:
        """kill -9 of the launcher and every process under it (gateway, tritonserver, stubs) at once; then
        what nobody is left to clean up: the python backend's shared-memory regions, named in the stubs'
        command lines."""
        pids = [self.proc.pid, *descendants(self.proc.pid)]
        regions = shm_regions(pids)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(30)
        for name in regions:
            Path("/dev/shm", name).unlink(missing_ok=True)


def _started_redis(tmp_path_factory: pytest.TempPathFactory, name: str) -> RedisServer:
    """A running redis-server for a module's launchers; skips when tritonserver or redis-server is missing."""
    try:
        locate()
    except TritonNotFound as e:
        pytest.skip(f"tritonserver not set up: {e}")
    try:
        redis = RedisServer(tmp_path_factory.mktemp(name))
    except FileNotFoundError:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    redis.start()
    return redis


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Instance]]:
    redis = _started_redis(tmp_path_factory, "redis")
    insts: dict[str, Instance] = {}
    try:
        for name, topic in (("A", "t"), ("B", "t"), ("C", "other")):
            insts[name] = Instance(tmp_path_factory.mktemp(f"inst{name}"), redis.port, topic)
        for inst in insts.values():
            inst.wait_ready()
        insts["_redis_port"] = redis.port  # type: ignore[assignment]
        yield insts
    finally:
        for name, inst in insts.items():
            if name.startswith("_"):
                continue
            inst.kill()
            (inst.run_dir.parent / "launcher.log").write_text("\n".join(inst.lines))
            print(f"instance {name} log: {inst.run_dir.parent / 'launcher.log'}")
        redis.stop()


def _stream(port: int, prompt: str, max_tokens: int = 100, started: threading.Event | None = None) -> str:
    """One streaming completion; returns its text, or 'ERROR: <message>' for an error chunk. Sets `started`
    at its first text."""
    import json

    text = ""
    body = {"model": "default", "prompt": prompt, "max_tokens": max_tokens, "stream": True, "temperature": 0}
    with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=120) as r:
        if r.status_code != 200:
            return f"HTTP {r.status_code}: {r.read().decode()}"
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return "ERROR: " + chunk["error"]["message"]
            text += chunk["choices"][0]["text"]
            if started is not None and text:
                started.set()
    return text


def _prompts(tag: str) -> list[str]:
    return [f"{tag} request number {i:02d}" for i in range(N)]


def test_idle_instance_takes_work_and_other_topics_none(cluster: dict[str, Instance]) -> None:
    a, b, c = cluster["A"], cluster["B"], cluster["C"]
    cluster = {k: v for k, v in cluster.items() if not k.startswith("_")}
    before = {k: v.events() for k, v in cluster.items()}
    with ThreadPoolExecutor(N) as pool:
        answers = list(pool.map(lambda p: _stream(a.port, p), _prompts("share")))
    for prompt, answer in zip(_prompts("share"), answers, strict=True):
        assert answer == "echo: " + prompt  # what one instance alone answers
    after = {k: v.events() for k, v in cluster.items()}
    delta = {k: {e: n - before[k].get(e, 0) for e, n in after[k].items()} for k in cluster}
    ran = {k: d.get("executed", 0) for k, d in delta.items()}
    print(f"requests run per instance: {ran}; scheduler events: {delta}")
    assert delta["A"]["submitted"] == N  # (also: the counter family is on each gateway's /metrics)
    # Every request started from scratch exactly once; a resume (a lease that lapsed under load and was taken
    # over) continues a request, it does not repeat it.
    assert sum(d.get("executed", 0) - d.get("resumed", 0) for d in delta.values()) == N, delta
    assert ran["B"] >= 0.3 * N, ran
    assert ran["C"] == 0, ran
    del b, c


def test_kill_9_of_the_instance_running_streams(cluster: dict[str, Instance]) -> None:
    a, b = cluster["A"], cluster["B"]
    before_b = b.ensemble_done()
    import redis as redis_sync

    r = redis_sync.Redis(port=int(cluster["_redis_port"]))  # type: ignore[call-overload]
    with ThreadPoolExecutor(N) as pool:
        futures = [pool.submit(_stream, a.port, p) for p in _prompts("kill")]
        # Kill B once it has finished a few and is early in a stream: only runs away from the origin push
        # their tokens to Redis (`toks:R`, "1,2,"), and a request stays in `owner` until its last chunk, so
        # a leased request with a few ids pushed is a stream B has begun and will not end before the kill
        # lands (`toks:R` outlives its stream, so alone it is no proof: a CI run that trusted it killed an
        # idle B).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if b.ensemble_done() - before_b >= 2 and _mid_stream(r, "pllm:{t}:", max_sent=12):
                break
            time.sleep(0.02)
        b.kill()
        try:
            answers = [f.result(timeout=60) for f in futures]
        except Exception:  # show where the unfinished requests stand
            for k in sorted(r.keys("pllm:*:req:*")):
                prefix, rid = k.split(b":req:")
                print("REDIS", k, r.hmget(k, "attempt", "seq"), r.hget(prefix + b":owner", rid))
            raise
    done = sum(answer == "echo: " + p for p, answer in zip(_prompts("kill"), answers, strict=True))
    resumed = [line for line in _read(a.engine_log) if line.startswith("resume ")]
    print(f"after kill -9 of B: {done}/{N} complete; A resumed {len(resumed)} cut streams: {resumed}")
    # Streams B had begun continue on A after the ids already sent: no error, no repeat, no gap.
    for prompt, answer in zip(_prompts("kill"), answers, strict=True):
        assert answer == "echo: " + prompt
    assert resumed, "B was streaming when it was killed, so A must have resumed something"


def _mid_stream(r: object, prefix: str, max_sent: int) -> bool:
    """Whether a leased request has pushed between 1 and `max_sent` token ids (a run away from its origin that
    has begun and has, at 20 ms per token, a few hundred ms left)."""
    for rid in r.hkeys(prefix + "owner"):  # type: ignore[attr-defined]
        sent = r.get(prefix.encode() + b"toks:" + rid)  # type: ignore[attr-defined]
        if sent and 1 <= sent.count(b",") <= max_sent:
            return True
    return False


def _read(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture(scope="module")
def lone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Instance, RedisServer]]:
    """One instance with one engine slot and a 2 s scheduler TTL."""
    redis = _started_redis(tmp_path_factory, "redis2")
    inst = Instance(
        tmp_path_factory.mktemp("lone"),
        redis.port,
        "lone",
        "--max-num-seqs",
        "1",
        "--scheduler-ttl",
        "2",
        "--max-model-len",
        "1024",
    )
    try:
        inst.wait_ready()
        yield inst, redis
    finally:
        inst.kill()
        redis.stop()


def test_a_request_waiting_past_the_ttl_gets_a_clear_503(lone: tuple[Instance, RedisServer]) -> None:
    inst, _ = lone
    with ThreadPoolExecutor(2) as pool:
        started = threading.Event()
        # 306 tokens at 20 ms each (>= 6 s of sleeps, longer under load) in the only slot
        long = pool.submit(_stream, inst.port, "x" * 300, 400, started)
        assert started.wait(120), "the long request did not start"
        t0 = time.monotonic()
        waiting = _stream(inst.port, "waits")
        waited = time.monotonic() - t0
        # Refused while the long request still held the only slot, not served after it ...
        assert not long.done(), "the waiting request was answered after the slot came free"
        assert long.result(timeout=120) == "echo: " + "x" * 300
    assert waiting.startswith("HTTP 503") and "not started within the scheduler TTL" in waiting, waiting
    assert waited >= 1.5  # ... and not before its 2 s TTL: a lower bound, which load only makes easier


def test_redis_stopped_503_then_restarted_success(lone: tuple[Instance, RedisServer]) -> None:
    inst, redis = lone
    assert _stream(inst.port, "before") == "echo: before"
    rejected = inst.events().get("rejected", 0)
    redis.stop()
    try:
        for _ in range(3):
            answer = _stream(inst.port, "during")  # (its 120 s client timeout guards a hang)
            assert answer.startswith("HTTP 503") and "unavailable" in answer, answer
        # Each refused by the scheduler (that it does so without a Redis round trip once unhealthy is
        # test_global_scheduler.py's test_redis_lost_fails_fast_then_recovers).
        assert inst.events().get("rejected", 0) - rejected == 3
        assert httpx.get(f"http://127.0.0.1:{inst.port}/health", timeout=10).status_code == 503
    finally:
        redis.start()
    deadline = time.monotonic() + 60  # only a hang guard
    answer = ""
    while time.monotonic() < deadline:
        answer = _stream(inst.port, "after")
        if answer == "echo: after":
            break
        time.sleep(0.2)
    assert answer == "echo: after"
