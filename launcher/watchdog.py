"""Is the engine still stepping? Progress read from the engine's own metrics on tritonserver's metrics port.

A wedged engine (a step that never ends: a deadlock, a rank stuck in a collective, a stopped process) passes
every liveness check the launcher has: its processes exist and tritonserver answers. What it cannot fake is
progress. The engine observes `paddlellm:batch_size` once per finished step, so that histogram's `_count` is
a step counter, and it sets `num_requests_running` / `num_requests_waiting` before every step. The watchdog
calls the engine wedged when requests are in flight and the step counter has not moved for `timeout_s`
(vLLM's equivalent, VLLM_ENGINE_ITERATION_TIMEOUT_S, is 60 s; the default here leaves room for a long prefill
chunk on a CPU). The values are tritonserver's copies, so a stopped stub leaves them frozen rather than
absent; a page that cannot be read says nothing (tritonserver's own death is checked separately).
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from paddlellm.protocol.metric_names import PREFIX

_SAMPLE = re.compile(r"^(" + re.escape(PREFIX) + r"[a-z_]+)(?:\{[^}]*\})? (\S+)$", re.MULTILINE)


@dataclass(frozen=True)
class Progress:
    steps: float  # engine steps finished so far
    in_flight: float  # requests running or waiting in the engine


def parse_progress(page: str) -> Progress | None:
    """The step counter and the requests in flight from a Prometheus text page; None when the engine's
    families are not on it (yet)."""
    values: dict[str, float] = {}
    for name, value in _SAMPLE.findall(page):
        values[name] = values.get(name, 0.0) + float(value)
    steps = values.get(PREFIX + "batch_size_count")
    running = values.get(PREFIX + "num_requests_running")
    if steps is None and running is None:
        return None
    return Progress(steps or 0.0, (running or 0.0) + values.get(PREFIX + "num_requests_waiting", 0.0))


def fetch(url: str, timeout_s: float = 2.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError):
        return None


class StepWatchdog:
    """`check(now)` every second or so; a reason string once the engine has been busy without finishing a
    step for longer than `timeout_s`, else None. `reset()` after a restart."""

    def __init__(self, url: str, timeout_s: float, read: Callable[[str], str | None] = fetch) -> None:
        self.url, self.timeout_s, self._read = url, timeout_s, read
        self._steps: float | None = None
        self._since = 0.0

    def reset(self) -> None:
        self._steps = None

    def check(self, now: float) -> str | None:
        page = self._read(self.url)
        progress = parse_progress(page) if page is not None else None
        if progress is None:
            return None
        if progress.in_flight <= 0 or progress.steps != self._steps:
            self._steps, self._since = progress.steps, now
            return None
        stalled = now - self._since
        if stalled <= self.timeout_s:
            return None
        return (
            f"the engine is wedged: no step finished in {stalled:.0f}s with {progress.in_flight:g} "
            f"request(s) in flight (--engine-step-timeout {self.timeout_s:g})"
        )
