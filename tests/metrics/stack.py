"""Start the whole stack (launcher -> tritonserver + gateway) for the metrics tests, and read /metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from launcher.tritonenv import TritonNotFound, locate
from paddlellm.triton.engine_metrics import APPLY_PERIOD_S
from tests.metrics.promtext import Exposition, parse
from tests.procs import follow_until_ready, free_port, stop_process  # noqa: F401 - re-exported for this folder's tests

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stack:
    proc: subprocess.Popen
    port: int
    metrics_port: int
    run_dir: Path
    workers: int = 1
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def scrape(self) -> Exposition:
        r = httpx.get(self.metrics_url, timeout=10)
        r.raise_for_status()
        assert r.headers["content-type"].startswith("text/plain"), r.headers
        return parse(r.text)

    def wait_metrics(self, ok: Callable[[Exposition], bool], timeout: float = 20.0) -> Exposition:
        """Scrape until `ok` holds (engine metrics are applied by a thread, a moment after the responses),
        then once more after the engine's apply period has passed three times: a batch is applied one IPC at
        a time, so the page that first satisfies `ok` may hold part of the last batch."""
        deadline = time.monotonic() + timeout
        while True:
            page = self.scrape()
            if ok(page):
                time.sleep(3 * APPLY_PERIOD_S)
                page = self.scrape()
                if ok(page):
                    return page
            if time.monotonic() > deadline:
                return page
            time.sleep(0.2)


@contextmanager
def running_stack(
    model: str,
    run_dir: Path,
    workers: int = 1,
    separate_metrics_port: bool = False,
    extra: tuple[str, ...] = (),
) -> Iterator[Stack]:
    try:
        locate()
    except TritonNotFound as e:
        pytest.skip(f"tritonserver not set up: {e}")
    port = free_port()
    metrics_port = free_port() if separate_metrics_port else port
    argv = [sys.executable, "-m", "gateway.api_server", "--model", model, "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--workers", str(workers), "--run-dir", str(run_dir), *extra]
    if separate_metrics_port:
        argv += ["--metrics-port", str(metrics_port)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    st = Stack(proc, port, metrics_port, run_dir, workers)
    try:
        if not follow_until_ready(proc, st.lines, 300):
            pytest.fail("the stack did not get ready:\n" + "\n".join(st.lines[-40:]))
        deadline = time.monotonic() + 30
        while True:  # the separate metrics server starts alongside the gateway
            try:
                httpx.get(st.metrics_url, timeout=5).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield st
    finally:
        stop_process(proc)
