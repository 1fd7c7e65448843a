"""Process and port helpers shared by the tests that start servers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from paddlellm.ports import free_port  # noqa: F401 - the tests' port helper


def descendants(pid: int) -> set[int]:
    """Every live descendant of `pid`, read from /proc (to prove a stop left no process behind)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def shm_regions(pids: set[int] | list[int]) -> set[str]:
    """The python backend's shared-memory regions named in these processes' command lines (its stubs')."""
    out: set[str] = set()
    for pid in pids:
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        out |= {a.decode() for a in args if a.startswith(b"triton_python_backend_shm_region")}
    return out


def stop_process(proc: subprocess.Popen[str], timeout: float = 90) -> None:
    """SIGTERM (a launcher then stops its tritonserver and gateway), SIGKILL if it is still up after
    `timeout` seconds; returns once it has exited."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def follow_until_ready(
    proc: subprocess.Popen[str], lines: list[str], timeout: float, marker: str = "[launcher] ready"
) -> bool:
    """Collect `proc`'s stdout into `lines` from a daemon thread and wait for a line holding `marker`.
    False if the process exited or `timeout` passed first; the caller decides how to fail."""
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            if marker in line:
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.1):
        if proc.poll() is not None or time.monotonic() > deadline:
            return ready.is_set()
    return True


@contextlib.contextmanager
def served_stack(model: str, run_dir: Path, *flags: str) -> Iterator[str]:
    """`python -m gateway.api_server --model MODEL FLAGS` on a free loopback port with `run_dir`, from the
    repository root; yields its base URL once the launcher says ready (fails the test otherwise, with the
    last lines it printed) and stops it with SIGTERM (SIGKILL after 90 s) at exit."""
    import pytest

    port = free_port()
    argv = [sys.executable, "-m", "gateway.api_server", "--model", model, "--host", "127.0.0.1",
            "--port", str(port), "--run-dir", str(run_dir), *flags]  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=Path(__file__).resolve().parents[1], env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    if not follow_until_ready(proc, lines, 600):
        proc.kill()
        proc.wait()
        pytest.fail("the stack did not get ready:\n" + "\n".join(lines[-40:]))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


class UvicornThread:
    """`with UvicornThread(app) as srv:` serves `app` (lifespan included) on a free loopback port, `srv.port`,
    from a thread of this process, and stops it on exit."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> UvicornThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        assert not self.thread.is_alive()
