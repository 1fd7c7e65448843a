"""Process and port helpers shared by the tests that start servers."""

from __future__ import annotations

import subprocess
import threading
import time
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
