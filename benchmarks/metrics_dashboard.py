"""Metrics dashboard from a load run: start the stack, drive a varying load, scrape /metrics every second,
render the dashboard's panels with matplotlib (docs/metrics-dashboard.png) and print a summary table.

  python benchmarks/metrics_dashboard.py                     # default model, 120 s of load
  python benchmarks/metrics_dashboard.py --url http://127.0.0.1:8188 --metrics-url http://127.0.0.1:8188/metrics
  python benchmarks/metrics_dashboard.py --grafana-only      # rewrite docs/grafana-dashboard.json and exit

The panels are defined once (benchmarks/metrics_panels.py): each series has the PromQL the Grafana
dashboard uses and the same computation over the scraped samples, so the PNG shows what Grafana would.
Other jobs on the machine make the latencies noisy.
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
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))  # a script: its sibling module
from metrics_panels import PANELS, P, Scrape, Window, grafana_dashboard, parse_scrape  # noqa: E402

WINDOW_S = 10.0  # rate window of the local rendering (Grafana's panels use [1m])

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
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
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
