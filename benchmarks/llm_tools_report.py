"""The tables of scripts/bench_llm_tools.sh: genai-perf's and aiperf's own JSON exports, side by side.

    python benchmarks/llm_tools_report.py [OUT]    (default OUT: benchmarks/results/llm_tools)

Reads OUT/genai-perf/c<N>/profile_export_genai_perf.json (and perf_analyzer's profile_export.json beside it,
for the request count) and OUT/aiperf/c<N>/profile_export_aiperf.json, and prints one markdown row per tool
and concurrency: TTFT and inter-token latency (avg, p50, p99, ms), output tokens/s, requests/s, requests and
errors. The numbers are the tools' own; nothing is recomputed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HEADER = (
    "| tool (target) | c | requests | errors | TTFT avg / p50 / p99 ms | ITL avg / p50 / p99 ms "
    "| output tok/s | req/s |\n|---|---:|---:|---:|---:|---:|---:|---:|"
)


def _stat(d: dict[str, Any]) -> str:
    return " / ".join(f"{d[k]:.0f}" if d.get(k) is not None else "-" for k in ("avg", "p50", "p99"))


def genai_perf_row(level: Path) -> str | None:
    f = level / "profile_export_genai_perf.json"
    if not f.exists():
        return None
    d = json.loads(f.read_text())
    raw = level / "profile_export.json"  # perf_analyzer's: one entry per request it timed
    requests = (
        sum(len(e.get("requests", [])) for e in json.loads(raw.read_text()).get("experiments", []))
        if raw.exists()
        else "-"
    )
    c = d["input_config"]["concurrency"]
    return (
        f"| genai-perf (tritonserver, gRPC) | {c} | {requests} | 0 | {_stat(d['time_to_first_token'])} "
        f"| {_stat(d['inter_token_latency'])} | {d['output_token_throughput']['avg']:.1f} "
        f"| {d['request_throughput']['avg']:.2f} |"
    )


def aiperf_row(level: Path) -> str | None:
    f = level / "profile_export_aiperf.json"
    if not f.exists():
        return None
    d = json.loads(f.read_text())
    errors = sum(e.get("count", 0) for e in d.get("error_summary") or [])
    c = level.name.removeprefix("c")
    return (
        f"| aiperf (gateway, HTTP) | {c} | {d['request_count']['avg']:.0f} | {errors} "
        f"| {_stat(d['time_to_first_token'])} | {_stat(d['inter_token_latency'])} "
        f"| {d['output_token_throughput']['avg']:.1f} | {d['request_throughput']['avg']:.2f} |"
    )


def report(out: Path) -> str:
    rows = []
    for tool, row in (("genai-perf", genai_perf_row), ("aiperf", aiperf_row)):
        levels = sorted((out / tool).glob("c[0-9]*"), key=lambda p: int(p.name[1:]))
        rows += [r for r in map(row, levels) if r is not None]
    return "\n".join([HEADER, *rows])


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else REPO / "benchmarks" / "results" / "llm_tools"
    print(report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
