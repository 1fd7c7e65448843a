"""A child process of the stack: its own session, output pumped to a log file and (filtered) to the console,
stopped with its whole process group."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child before exec: if the launcher is killed outright, the child gets SIGTERM.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ManagedProcess:
    """A child in its own session (so a terminal's Ctrl-C reaches only the launcher, which stops children
    in order), with its output pumped to a log file and, filtered, to the console."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log_path: Path,
        on_line: Callable[[str], None],
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self.tail: deque[str] = deque(maxlen=25)
        self._log: IO[str] = open(log_path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            text=True,
            errors="replace",
        )
        self._on_line = on_line
        self._pump = threading.Thread(target=self._read, name=f"{name}-log", daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._log.write(line)
            self._log.flush()
            if not line.startswith(("|", "+")):  # Triton's status tables say less than its error lines
                self.tail.append(line.rstrip("\n"))
            self._on_line(line)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> int | None:
        """SIGKILL the whole process group now (a restart: nothing in it is worth waiting for)."""
        return self.stop(timeout_s=0)

    def stop(self, timeout_s: float) -> int | None:
        """SIGTERM, wait, then SIGKILL the whole process group. Returns the exit code."""
        if self.alive() and timeout_s > 0:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                print(f"[launcher] {self.name} did not exit in {timeout_s:g}s: killing it", flush=True)
        # Children of the child (stubs, rank workers, uvicorn workers) share its process group.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        code = self.proc.wait()
        self._pump.join(5)
        self._log.close()
        return code
