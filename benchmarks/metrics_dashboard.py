"""Metrics dashboard from a load run: start the stack, drive a varying load, scrape /metrics every second,
render the dashboard's panels with matplotlib (docs/metrics-dashboard.png) and print a summary table.

  python benchmarks/metrics_dashboard.py                     # default model, ~100 s of load
  python benchmarks/metrics_dashboard.py --url http://127.0.0.1:8188 --metrics-url http://127.0.0.1:8188/metrics
  python benchmarks/metrics_dashboard.py --grafana-only      # rewrite docs/grafana-dashboard.json and exit

The panels are defined once (PANELS): each series has the PromQL the Grafana dashboard uses and the same
computation over the scraped samples, so the PNG shows what Grafana would. Run with MKL_DEBUG_CPU_TYPE=5;
other jobs on the machine make the latencies noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
P = "paddlellm:"
WINDOW_S = 10.0  # rate window of the local rendering (Grafana's panels use [1m])

# ------------------------------------------------------------------------------------------ scrapes

Labels = frozenset[tuple[str, str]]


@dataclass(frozen=True)
class Scrape:
    t: float
    samples: dict[tuple[str, Labels], float]

    def total(self, name: str, **labels: str) -> float:
        want = set(labels.items())
        return sum(v for (n, lab), v in self.samples.items() if n == name and want <= lab)

    def buckets(self, name: str) -> dict[float, float]:
        out: dict[float, float] = {}
        for (n, lab), v in self.samples.items():
            if n == name + "_bucket":
                le = float(dict(lab)["le"].replace("+Inf", "inf"))
                out[le] = out.get(le, 0.0) + v
        return out


def parse_scrape(text: str, t: float) -> Scrape:
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return Scrape(t, samples)


@dataclass(frozen=True)
class Window:
    a: Scrape
    b: Scrape

    def rate(self, name: str, **labels: str) -> float:
        return max(0.0, self.b.total(name, **labels) - self.a.total(name, **labels)) / (self.b.t - self.a.t)

    def gauge(self, name: str) -> float:
        return self.b.total(name)

    def mean(self, hist: str) -> float | None:
        n = self.b.total(hist + "_count") - self.a.total(hist + "_count")
        return (self.b.total(hist + "_sum") - self.a.total(hist + "_sum")) / n if n > 0 else None

    def quantile(self, q: float, hist: str) -> float | None:
        """histogram_quantile over the window's bucket increases (linear inside the bucket, as Prometheus)."""
        a, b = self.a.buckets(hist), self.b.buckets(hist)
        les = sorted(b)
        inc = [b[le] - a.get(le, 0.0) for le in les]
        if not les or inc[-1] <= 0:
            return None
        rank, prev_le, prev_n = q * inc[-1], 0.0, 0.0
        for le, n in zip(les, inc, strict=True):
            if n >= rank:
                if math.isinf(le):
                    return prev_le
                return prev_le + (le - prev_le) * ((rank - prev_n) / (n - prev_n) if n > prev_n else 1.0)
            prev_le, prev_n = le, n
        return None


# ------------------------------------------------------------------------------------------ panels


@dataclass(frozen=True)
class Series:
    legend: str
    promql: str
    local: Callable[[Window], float | None]


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str  # Grafana unit id
    series: tuple[Series, ...]


M = '{model_name=~"$model_name"}'


def _rate(name: str, **labels: str) -> Series:
    sel = ",".join([*(f'{k}="{v}"' for k, v in labels.items()), 'model_name=~"$model_name"'])
    legend = ",".join(labels.values()) or name.removeprefix(P).removesuffix("_total")
    return Series(legend, f"sum(rate({P}{name}{{{sel}}}[1m]))", lambda w: w.rate(P + name, **labels))


def _gauge(name: str, legend: str) -> Series:
    return Series(legend, f"sum({P}{name}{M})", lambda w: w.gauge(P + name))


def _q(q: float, name: str) -> Series:
    expr = f"histogram_quantile({q}, sum by (le) (rate({P}{name}_bucket{M}[1m])))"
    return Series(f"p{round(q * 100)}", expr, lambda w: w.quantile(q, P + name))


def _mean(name: str, legend: str) -> Series:
    expr = f"sum(rate({P}{name}_sum{M}[1m])) / sum(rate({P}{name}_count{M}[1m]))"
    return Series(legend, expr, lambda w: w.mean(P + name))


def _http(status_re: str, legend: str) -> Series:
    expr = f'sum(rate({P}http_requests_total{{status=~"{status_re}"}}[1m]))'
    pattern = status_re.replace("..", "")

    def local(w: Window) -> float:
        keys = {dict(lab).get("status", "") for (n, lab) in w.b.samples if n == P + "http_requests_total"}
        return sum(w.rate(P + "http_requests_total", status=s) for s in keys if s.startswith(pattern))

    return Series(legend, expr, local)


PANELS: tuple[Panel, ...] = (
    Panel(
        "Finished requests / s by reason",
        "reqps",
        (
            _rate("request_success_total", finished_reason="stop"),
            _rate("request_success_total", finished_reason="length"),
            _rate("request_success_total", finished_reason="abort"),
            _rate("request_failure_total"),
        ),
    ),
    Panel(
        "Requests running / waiting",
        "short",
        (_gauge("num_requests_running", "running"), _gauge("num_requests_waiting", "waiting")),
    ),
    Panel(
        "Time to first token",
        "s",
        (_q(0.5, "time_to_first_token_seconds"), _q(0.95, "time_to_first_token_seconds")),
    ),
    Panel(
        "Time per output token",
        "s",
        (_q(0.5, "time_per_output_token_seconds"), _q(0.95, "time_per_output_token_seconds")),
    ),
    Panel(
        "End-to-end latency and queue time",
        "s",
        (
            _q(0.5, "e2e_request_latency_seconds"),
            _q(0.95, "e2e_request_latency_seconds"),
            Series(
                "queue p95",
                _q(0.95, "request_queue_time_seconds").promql,
                _q(0.95, "request_queue_time_seconds").local,
            ),
        ),
    ),
    Panel("Tokens / s", "short", (_rate("prompt_tokens_total"), _rate("generation_tokens_total"))),
    Panel("KV-cache usage", "percentunit", (_gauge("kv_cache_usage_perc", "used"),)),
    Panel(
        "Batch size per step and preemptions / s",
        "short",
        (_mean("batch_size", "mean batch"), _rate("num_preemptions_total")),
    ),
    Panel(
        "Prefill and decode time (mean)",
        "s",
        (_mean("request_prefill_time_seconds", "prefill"), _mean("request_decode_time_seconds", "decode")),
    ),
    Panel(
        "Gateway HTTP requests / s", "reqps", (_http("2..", "2xx"), _http("4..", "4xx"), _http("5..", "5xx"))
    ),
)


def grafana_dashboard() -> dict:
    panels = []
    for i, p in enumerate(PANELS):
        targets = [
            {
                "refId": chr(65 + j),
                "expr": s.promql,
                "legendFormat": s.legend,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
            }
            for j, s in enumerate(p.series)
        ]
        panels.append(
            {
                "id": i + 1,
                "type": "timeseries",
                "title": p.title,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
                "fieldConfig": {"defaults": {"unit": p.unit, "min": 0}, "overrides": []},
                "options": {
                    "legend": {"displayMode": "list", "placement": "bottom"},
                    "tooltip": {"mode": "multi"},
                },
                "targets": targets,
            }
        )
    variables = [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus"},
        {
            "name": "model_name",
            "label": "model",
            "type": "query",
            "includeAll": True,
            "multi": True,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "refresh": 2,
            "definition": f"label_values({P}num_requests_running, model_name)",
            "query": {"query": f"label_values({P}num_requests_running, model_name)", "refId": "models"},
        },
    ]
    return {
        "title": "paddlellm serving",
        "uid": "paddlellm-serving",
        "tags": ["paddlellm", "llm"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": variables},
        "panels": panels,
    }


# ------------------------------------------------------------------------------------------ load

WORDS = (
    "the model serves requests in batches while the cache holds keys and values for every token of "
    "each running sequence and new prompts wait in the queue until blocks are free"
).split()


async def client_loop(
    url: str,
    stop_at: float,
    concurrency_at: Callable[[float], int],
    slot: int,
    rng: random.Random,
    t0: float,
    stats: dict[str, int],
) -> None:
    async with httpx.AsyncClient(timeout=300) as http:
        while time.monotonic() < stop_at:
            if slot >= concurrency_at(time.monotonic() - t0):
                await asyncio.sleep(0.2)
                continue
            words = rng.randint(5, 60)
            body = {
                "model": "default",
                "prompt": " ".join(rng.choice(WORDS) for _ in range(words)),
                "max_tokens": rng.randint(24, 128),
                "temperature": 0.8,
                "stream": True,
                "ignore_eos": rng.random() < 0.5,
            }
            if rng.random() < 0.05:
                body["max_tokens"] = 10**6  # an invalid request: 400
            leave_after = 4 if rng.random() < 0.08 else None  # a client that disconnects: the engine aborts
            try:
                async with http.stream("POST", url + "/v1/completions", json=body) as r:
                    outcome = str(r.status_code)
                    n = 0
                    async for _ in r.aiter_lines():
                        n += 1
                        if leave_after is not None and n >= leave_after:
                            outcome = "disconnected"
                            break
                    stats[outcome] = stats.get(outcome, 0) + 1
            except httpx.HTTPError:
                stats["error"] = stats.get("error", 0) + 1


def concurrency_profile(duration: float, peak: int) -> Callable[[float], int]:
    """Up in steps to `peak`, hold, then down: queueing and KV pressure come and go."""

    def at(t: float) -> int:
        x = t / duration
        if x < 0.5:
            return max(1, math.ceil(peak * x / 0.5))
        if x < 0.75:
            return peak
        return max(1, math.ceil(peak * (1 - x) / 0.25))

    return at


async def run_load(url: str, metrics_url: str, duration: float, peak: int, seed: int) -> list[Scrape]:
    t0 = time.monotonic()
    stop_at = t0 + duration
    stats: dict[str, int] = {}
    profile = concurrency_profile(duration, peak)
    rng = random.Random(seed)
    clients = [
        asyncio.create_task(client_loop(url, stop_at, profile, i, random.Random(rng.random()), t0, stats))
        for i in range(peak)
    ]
    scrapes: list[Scrape] = []
    async with httpx.AsyncClient(timeout=10) as http:
        idle_since = None  # keep scraping a few seconds after the last client finished: gauges go to 0
        while idle_since is None or time.monotonic() - idle_since < 6:
            if idle_since is None and all(c.done() for c in clients):
                idle_since = time.monotonic()
            t = time.monotonic()
            scrapes.append(parse_scrape((await http.get(metrics_url)).text, t - t0))
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - t)))
    await asyncio.gather(*clients)
    print(f"responses by status: {dict(sorted(stats.items()))}")
    return scrapes


# ------------------------------------------------------------------------------------------ output


def render(scrapes: list[Scrape], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = math.ceil(len(PANELS) / 2)
    fig, axes = plt.subplots(rows, 2, figsize=(14, 3.0 * rows), sharex=True)
    lag = max(1, round(WINDOW_S))
    for ax, panel in zip(axes.flat, PANELS, strict=False):
        for s in panel.series:
            xs, ys = [], []
            for i in range(1, len(scrapes)):
                w = Window(scrapes[max(0, i - lag)], scrapes[i])
                v = s.local(w)
                xs.append(scrapes[i].t)  # None (nothing observed in the window) leaves a gap
                ys.append(math.nan if v is None else v * 100 if panel.unit == "percentunit" else v)
            ax.plot(xs, ys, label=s.legend, linewidth=1.4)
        unit = {"reqps": "req/s", "percentunit": "%", "s": "seconds"}.get(panel.unit, "")
        ax.set_title(panel.title, fontsize=10)
        ax.set_ylabel(unit, fontsize=8)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    for ax in axes[-1]:
        ax.set_xlabel("seconds since the load started")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def summary(scrapes: list[Scrape]) -> None:
    whole = Window(scrapes[0], scrapes[-1])
    rows = [
        (
            "requests finished",
            whole.b.total(P + "request_success_total") - whole.a.total(P + "request_success_total"),
        ),
        (
            "requests failed",
            whole.b.total(P + "request_failure_total") - whole.a.total(P + "request_failure_total"),
        ),
        (
            "prompt tokens",
            whole.b.total(P + "prompt_tokens_total") - whole.a.total(P + "prompt_tokens_total"),
        ),
        (
            "generated tokens",
            whole.b.total(P + "generation_tokens_total") - whole.a.total(P + "generation_tokens_total"),
        ),
        ("generated tokens / s", whole.rate(P + "generation_tokens_total")),
        (
            "preemptions",
            whole.b.total(P + "num_preemptions_total") - whole.a.total(P + "num_preemptions_total"),
        ),
        ("mean batch size", whole.mean(P + "batch_size") or 0.0),
    ]
    for name in (
        "time_to_first_token_seconds",
        "time_per_output_token_seconds",
        "e2e_request_latency_seconds",
        "request_queue_time_seconds",
    ):
        for q in (0.5, 0.95):
            rows.append((f"{name} p{round(q * 100)}", whole.quantile(q, P + name) or float("nan")))
    print(f"{'metric':<46} {'value':>12}")
    for k, v in rows:
        print(f"{k:<46} {v:>12.4g}")


def start_stack(args: argparse.Namespace, run_dir: Path, port: int) -> subprocess.Popen:
    argv = [
        sys.executable,
        "-m",
        "gateway.api_server",
        "--model",
        args.model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--run-dir",
        str(run_dir),
        "--max-model-len",
        "512",
        "--block-size",
        "16",
        "--max-num-seqs",
        str(args.max_num_seqs),
        "--num-gpu-blocks-override",
        str(args.kv_blocks),
        "--workers",
        str(args.workers),
    ]
    env = {**os.environ, "MKL_DEBUG_CPU_TYPE": "5", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line.rstrip())
        if "[launcher] ready" in line:
            # Keep draining its output, or the launcher blocks once the pipe is full.
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore
            return proc
    raise SystemExit(f"the stack exited with {proc.wait()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / ".models" / "SmolLM2-135M-Instruct"))
    ap.add_argument("--url", help="use a running server instead of starting one")
    ap.add_argument("--metrics-url", help="its /metrics (default: <url>/metrics)")
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of load")
    ap.add_argument("--peak", type=int, default=12, help="most concurrent clients")
    ap.add_argument("--max-num-seqs", type=int, default=8)
    ap.add_argument(
        "--kv-blocks", type=int, default=32, help="KV blocks of 16 tokens (few: queueing, preemption)"
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "metrics-dashboard.png")
    ap.add_argument("--grafana", type=Path, default=REPO / "docs" / "grafana-dashboard.json")
    ap.add_argument("--grafana-only", action="store_true")
    args = ap.parse_args()
    args.grafana.write_text(json.dumps(grafana_dashboard(), indent=1) + "\n")
    print(f"wrote {args.grafana}")
    if args.grafana_only:
        return 0
    proc = None
    url = args.url
    if url is None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = start_stack(args, Path(f"/tmp/paddlellm-metrics-bench-{port}"), port)
        url = f"http://127.0.0.1:{port}"
    try:
        scrapes = asyncio.run(
            run_load(url, args.metrics_url or url + "/metrics", args.duration, args.peak, args.seed)
        )
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(90)
    summary(scrapes)
    title = (
        f"paddlellm /metrics during a {args.duration:g} s load (up to {args.peak} streaming clients), "
        f"{Path(args.model).name}, CPU"
    )
    render(scrapes, args.out, title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
