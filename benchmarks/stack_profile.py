"""Where the serving stack spends CPU during a load level: per-process CPU time and Triton's model statistics.

Used by bench_stack.py --profile. Wall-clock tok/s on the shared 2-core machine swings by 2x between
identical runs; CPU seconds per generated token per process, and Triton's per-model queue/compute times per
execution, move much less with other people's load, so they show what a change to the serving path buys.

- Processes: the launcher's descendants, read from /proc (utime + stime), grouped by role: `stub:<model>`
  (one triton_python_backend_stub per model instance), `tritonserver`, `gateway` (uvicorn), `launcher`.
- Triton: GET /v2/models/stats on tritonserver's HTTP port (the launcher writes it to endpoints.json):
  per model the inference count, execution count (one per execute() call), and cumulative queue /
  compute_input / compute_infer / compute_output nanoseconds.
"""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    task = Path(f"/proc/{pid}/task")
    try:
        for t in task.iterdir():
            out += [int(c) for c in (t / "children").read_text().split()]
    except OSError:
        pass
    return out


def descendants(root: int) -> list[int]:
    todo, seen = [root], []
    while todo:
        pid = todo.pop()
        seen.append(pid)
        todo += _children(pid)
    return seen


def _role(pid: int) -> str | None:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    words = [a.decode(errors="replace") for a in argv if a]
    if not words:
        return None
    if words[0].endswith("triton_python_backend_stub"):
        # argv[1] is .../model_repository/<model>/<version>/model.py
        return "stub:" + Path(words[1]).parent.parent.name
    if words[0].endswith("tritonserver"):
        return "tritonserver"
    if "uvicorn" in words:
        return "gateway"
    if "gateway.api_server" in words:
        return "launcher"
    return "other"


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15 of stat)


def cpu_by_role(root: int) -> dict[str, float]:
    """CPU seconds used so far by every process under `root`, summed per role."""
    out: dict[str, float] = {}
    for pid in descendants(root):
        role = _role(pid)
        if role is not None:
            out[role] = out.get(role, 0.0) + _cpu_s(pid)
    return out


@dataclass(frozen=True)
class ModelStats:
    inferences: int
    executions: int
    queue_ns: int
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int

    def minus(self, o: ModelStats) -> ModelStats:
        return ModelStats(*(a - b for a, b in zip(self._values(), o._values(), strict=True)))

    def _values(self) -> tuple[int, ...]:
        return (self.inferences, self.executions, self.queue_ns, self.compute_input_ns,
                self.compute_infer_ns, self.compute_output_ns)


def triton_stats(http: str) -> dict[str, ModelStats]:
    """Cumulative statistics of every model (`http` = host:port of tritonserver's HTTP endpoint)."""
    with urllib.request.urlopen(f"http://{http}/v2/models/stats", timeout=10) as resp:  # noqa: S310
        body = json.load(resp)
    out = {}
    for m in body.get("model_stats", []):
        s = m["inference_stats"]
        out[m["name"]] = ModelStats(
            inferences=int(m.get("inference_count", 0)),
            executions=int(m.get("execution_count", 0)),
            queue_ns=int(s["queue"]["ns"]),
            compute_input_ns=int(s["compute_input"]["ns"]),
            compute_infer_ns=int(s["compute_infer"]["ns"]),
            compute_output_ns=int(s["compute_output"]["ns"]),
        )
    return out


@dataclass(frozen=True)
class Snapshot:
    cpu: dict[str, float]
    models: dict[str, ModelStats]


def snapshot(root: int, triton_http: str | None) -> Snapshot:
    return Snapshot(cpu_by_role(root), triton_stats(triton_http) if triton_http else {})


def report(before: Snapshot, after: Snapshot, tokens: int, steps: int) -> dict:
    """Per-role CPU ms per engine step and per token, and per-model Triton times, between two snapshots."""
    cpu = {r: after.cpu.get(r, 0.0) - before.cpu.get(r, 0.0) for r in after.cpu}
    models = {name: s.minus(before.models[name]) for name, s in after.models.items() if name in before.models}
    return {
        "tokens": tokens,
        "steps": steps,
        "cpu_ms_per_step": {r: 1e3 * v / max(steps, 1) for r, v in sorted(cpu.items())},
        "cpu_ms_per_token": {r: 1e3 * v / max(tokens, 1) for r, v in sorted(cpu.items())},
        "models": {
            name: {
                "inferences": s.inferences,
                "executions": s.executions,
                "queue_ms_per_inference": s.queue_ns / 1e6 / max(s.inferences, 1),
                "compute_ms_per_inference": (s.compute_input_ns + s.compute_infer_ns + s.compute_output_ns)
                / 1e6 / max(s.inferences, 1),
                "compute_ms_per_step": (s.compute_input_ns + s.compute_infer_ns + s.compute_output_ns)
                / 1e6 / max(steps, 1),
            }
            for name, s in sorted(models.items())
        },
    }


def format_report(rep: dict) -> str:
    lines = [f"  {rep['tokens']} tokens, ~{rep['steps']} engine steps"]
    lines.append("  CPU ms per step: " + ", ".join(f"{r} {v:.1f}" for r, v in rep["cpu_ms_per_step"].items()))
    for name, m in rep["models"].items():
        if m["inferences"]:
            lines.append(
                f"  {name}: {m['inferences']} inferences in {m['executions']} executions, queue "
                f"{m['queue_ms_per_inference']:.2f} ms + compute {m['compute_ms_per_inference']:.3f} ms per "
                f"inference ({m['compute_ms_per_step']:.1f} ms compute per step)"
            )
    return "\n".join(lines)
