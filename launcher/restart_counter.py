"""The launcher's restart counter as a Prometheus text file the gateway appends to its /metrics.

The launcher is not an HTTP server and its supervision runs in one thread, so rather than a registry it
keeps the counts itself and rewrites `<run-dir>/launcher.prom` (node_exporter's textfile-collector pattern:
written to a temporary file and renamed, so a scrape never reads half a file). Every cause is written from
the start, at 0, so a rate() over the series works before the first restart.
"""

from __future__ import annotations

import os
from pathlib import Path

from paddlellm.protocol.metric_names import LAUNCHER_METRICS

RESTARTS = LAUNCHER_METRICS[0]
CAUSES = ("tritonserver_died", "engine_died", "rank_died", "engine_wedged", "restart_failed")


class RestartCounter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.counts = dict.fromkeys(CAUSES, 0)
        self._write()

    def inc(self, cause: str) -> None:
        if cause not in self.counts:
            raise ValueError(f"unknown restart cause {cause!r} (one of {', '.join(CAUSES)})")
        self.counts[cause] += 1
        self._write()

    def render(self) -> str:
        help_text = RESTARTS.help.replace("\\", "\\\\").replace("\n", "\\n")
        lines = [f"# HELP {RESTARTS.name} {help_text}", f"# TYPE {RESTARTS.name} counter"]
        lines += [f'{RESTARTS.name}{{cause="{c}"}} {float(n)}' for c, n in self.counts.items()]
        return "\n".join(lines) + "\n"

    def _write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(self.render(), encoding="utf-8")
        os.replace(tmp, self.path)
