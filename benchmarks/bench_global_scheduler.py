"""Global scheduler benchmarks, on a real redis-server (Debian's package) started on a free loopback port.

  python benchmarks/bench_global_scheduler.py ttft    TTFT the global scheduler adds over calling the engine
                                                      directly (the local path), at concurrency 1 and 16
  python benchmarks/bench_global_scheduler.py share   share of A's requests that an idle B runs, as the
                                                      number of concurrent clients of A grows
  python benchmarks/bench_global_scheduler.py triton  TTFT through a real tritonserver (toy models): the
                                                      ensemble stream opened directly vs via the scheduler
  python benchmarks/bench_global_scheduler.py stack   the same TTFT comparison through real launchers
                                                      (tritonserver + gateway, the toy models), over HTTP

The engine is a fake with a fixed per-token time, so the numbers are the scheduler's own cost (Redis round
trips, the result path) and its balancing, not model speed. Prints a table, writes JSON and a PNG under --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from gateway.global_scheduler import (  # noqa: E402
    Chunk,
    EnsembleInputs,
    GlobalScheduler,
    GlobalSchedulerSettings,
    WorkRequest,
)


class TimedEngine:
    """First token after `first` seconds, then one per `step` seconds."""

    def __init__(self, first: float, step: float, tokens: int) -> None:
        self.first, self.step, self.tokens = first, step, tokens

    async def run(self, request: WorkRequest) -> AsyncIterator[Chunk]:
        done = len(request.resume_token_ids)
        for i in range(done, self.tokens):
            await asyncio.sleep(self.first if i == done else self.step)
            last = i == self.tokens - 1
            yield Chunk(f"t{i} ", (i,), "length" if last else "", 8, i + 1)


def start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            workdir,
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc, port
        except OSError:
            time.sleep(0.02)
    sys.exit("redis-server did not start")


async def _first_chunk(stream: AsyncIterator[Chunk], t0: float) -> tuple[float, str]:
    ttft, who = -1.0, ""
    async for chunk in stream:
        if ttft < 0:
            ttft, who = time.perf_counter() - t0, chunk.executor
    return ttft, who


async def _clients(concurrency: int, per_client: int, one) -> list[Any]:  # type: ignore[no-untyped-def]
    async def client(c: int) -> list[Any]:
        return [await one(f"c{c} r{i}") for i in range(per_client)]

    results = await asyncio.gather(*(client(c) for c in range(concurrency)))
    return [r for rs in results for r in rs]


async def bench_ttft(port: int, requests: int) -> list[dict[str, Any]]:
    # 20 ms to the first token, then 10 ms per token: a small model on a GPU.
    engine = TimedEngine(first=0.02, step=0.01, tokens=16)
    rows = []
    for concurrency in (1, 16):
        per_client = max(1, requests // concurrency)

        async def local(prompt: str) -> tuple[float, str]:
            t0 = time.perf_counter()
            req = WorkRequest(prompt, "local", EnsembleInputs(prompt=prompt), time.time())
            return await _first_chunk(engine.run(req), t0)

        base = [t for t, _ in await _clients(concurrency, per_client, local)]
        s = GlobalSchedulerSettings(port=port, topic=f"ttft{concurrency}")
        a = GlobalScheduler(s, engine, capacity=concurrency, instance_id="A")
        b = GlobalScheduler(s, engine, capacity=concurrency, instance_id="B")  # idle peer, polling for work
        await a.start()
        await b.start()
        try:

            async def global_(prompt: str, a: GlobalScheduler = a) -> tuple[float, str]:
                t0 = time.perf_counter()
                return await _first_chunk(await a.submit(EnsembleInputs(prompt=prompt)), t0)

            await _clients(concurrency, 2, global_)  # warm up connections and scripts
            glob = [t for t, _ in await _clients(concurrency, per_client, global_)]
        finally:
            await a.stop()
            await b.stop()
        med_l, med_g = statistics.median(base), statistics.median(glob)
        p90 = lambda xs: statistics.quantiles(xs, n=10)[-1]  # noqa: E731
        rows.append(
            {
                "concurrency": concurrency,
                "requests": len(glob),
                "local_ttft_ms_p50": med_l * 1e3,
                "global_ttft_ms_p50": med_g * 1e3,
                "added_ms_p50": (med_g - med_l) * 1e3,
                "added_ms_p90": (p90(glob) - p90(base)) * 1e3,
            }
        )
    return rows


async def bench_share(port: int, requests: int) -> list[dict[str, Any]]:
    engine = TimedEngine(first=0.02, step=0.005, tokens=16)  # ~95 ms per request
    rows = []
    for concurrency in (1, 2, 4, 6, 8, 12, 16, 32):
        s = GlobalSchedulerSettings(port=port, topic=f"share{concurrency}", min_load_score=3)
        a = GlobalScheduler(s, engine, capacity=4, instance_id="A")
        b = GlobalScheduler(s, engine, capacity=4, instance_id="B")
        await a.start()
        await b.start()
        try:

            async def one(prompt: str, a: GlobalScheduler = a) -> tuple[float, str]:
                t0 = time.perf_counter()
                return await _first_chunk(await a.submit(EnsembleInputs(prompt=prompt)), t0)

            t0 = time.perf_counter()
            res = await _clients(concurrency, max(2, requests // concurrency), one)
            wall = time.perf_counter() - t0
        finally:
            await a.stop()
            await b.stop()
        by_b = sum(1 for _, who in res if who == "B")
        rows.append(
            {
                "clients_of_A": concurrency,
                "requests": len(res),
                "share_B": by_b / len(res),
                "ttft_ms_p50": statistics.median(t for t, _ in res) * 1e3,
                "req_per_s": len(res) / wall,
            }
        )
    return rows


def _launch(tmp: Path, extra: list[str]) -> tuple[subprocess.Popen[str], int]:
    """A launcher on the character-level toy models of tests/gateway/toy_models (20 ms per token)."""
    root = Path(REPO)
    template = tmp / "template"
    for name in ("tokenizer", "llm_engine", "detokenizer", "ensemble"):
        (template / name / "1").mkdir(parents=True)
        shutil.copy(root / "model_repository" / name / "config.pbtxt", template / name / "config.pbtxt")
        if name != "ensemble":
            shutil.copy(root / "tests/gateway/toy_models" / f"{name}.py", template / name / "1" / "model.py")
    model = tmp / "toy-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [
        sys.executable,
        "-m",
        "gateway.api_server",
        "--model",
        str(model),
        "--model-repository",
        str(template),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        "256",
        "--max-num-seqs",
        "16",
        "--run-dir",
        str(tmp / "run"),
        *extra,
    ]
    proc = subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "[launcher] ready" in line:
            return proc, port
    sys.exit("launcher did not start")


def _ttft_http(port: int, prompt: str) -> float:
    import httpx

    body = {"model": "default", "prompt": prompt, "max_tokens": 8, "stream": True}
    t0 = time.perf_counter()
    first = -1.0
    with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if first < 0 and line.startswith("data: {") and '"text":""' not in line.replace(" ", ""):
                first = time.perf_counter() - t0
    return first


def bench_stack(port: int, requests: int) -> list[dict[str, Any]]:
    """Real launchers (tritonserver + gateway, toy models): local scheduler vs global (with an idle peer)."""
    from concurrent.futures import ThreadPoolExecutor

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        glob = ["--scheduler-name", "global", "--scheduler-port", str(port), "--scheduler-topic", "bench"]
        procs = {
            name: _launch(Path(tmp) / name, extra)
            for name, extra in (("local", []), ("global", glob), ("peer", glob))
        }
        try:
            for concurrency in (1, 16):
                row: dict[str, Any] = {"concurrency": concurrency}
                ttfts: dict[str, list[float]] = {"local": [], "global": []}
                # Alternate short rounds so drifting load on the machine hits both alike.
                for rnd in range(4):
                    for name in ("local", "global") if rnd % 2 == 0 else ("global", "local"):
                        port_ = procs[name][1]
                        with ThreadPoolExecutor(concurrency) as pool:
                            if rnd == 0:
                                list(
                                    pool.map(
                                        lambda i, p=port_: _ttft_http(p, f"warm {i}"), range(concurrency)
                                    )
                                )
                            n = max(concurrency, requests // 4)
                            ttfts[name] += pool.map(lambda i, p=port_: _ttft_http(p, f"r{i}"), range(n))
                for name, xs in ttfts.items():
                    row[f"{name}_ttft_ms_p50"] = statistics.median(xs) * 1e3
                row["added_ms_p50"] = row["global_ttft_ms_p50"] - row["local_ttft_ms_p50"]
                rows.append(row)
        finally:
            for proc, _ in procs.values():
                os.killpg(proc.pid, 15)
                proc.wait(60)
    return rows


async def _bench_triton_async(redis_port: int, grpc_url: str, requests: int) -> list[dict[str, Any]]:
    from tritonclient.grpc.aio import InferenceServerClient

    from gateway.global_scheduler.scheduled_backend import TritonLocalEngine
    from gateway.translate import EnsembleRequest
    from gateway.triton_stream import TritonEnsemble

    client = InferenceServerClient(grpc_url)
    ens = TritonEnsemble(client, "ensemble", "llm_engine", 60)
    s = GlobalSchedulerSettings(port=redis_port, topic="bench-triton")
    sched = GlobalScheduler(s, TritonLocalEngine(ens), capacity=16, instance_id="T")
    peer = GlobalScheduler(s, TritonLocalEngine(ens), capacity=16, instance_id="peer")  # idle, polling
    await sched.start()
    await peer.start()
    sampling = json.dumps({"max_tokens": 8})

    async def direct(i: int) -> float:
        t0 = time.perf_counter()
        st = ens.open(EnsembleRequest(f"p{i}", "", sampling), f"d{i}-{time.monotonic_ns()}")
        first = -1.0
        while True:
            r = await st.next()
            if first < 0 and r.text:
                first = time.perf_counter() - t0
            if r.final:
                return first

    async def scheduled(i: int) -> float:
        t0 = time.perf_counter()
        first = -1.0
        async for c in await sched.submit(EnsembleInputs(prompt=f"p{i}", sampling=sampling)):
            if first < 0 and c.text:
                first = time.perf_counter() - t0
        return first

    rows = []
    try:
        for concurrency in (1, 16):
            out: dict[str, list[float]] = {"local": [], "global": []}
            for rnd in range(4):  # alternate rounds so drifting machine load hits both alike
                for name in ("local", "global") if rnd % 2 == 0 else ("global", "local"):
                    fn = direct if name == "local" else scheduled
                    n = max(1, requests // 4 // concurrency)
                    for _ in range(n):
                        out[name] += await asyncio.gather(*(fn(i) for i in range(concurrency)))
            rows.append(
                {
                    "concurrency": concurrency,
                    "requests": len(out["global"]),
                    "local_ttft_ms_p50": statistics.median(out["local"]) * 1e3,
                    "global_ttft_ms_p50": statistics.median(out["global"]) * 1e3,
                    "added_ms_p50": (statistics.median(out["global"]) - statistics.median(out["local"]))
                    * 1e3,
                }
            )
    finally:
        await sched.stop()
        await peer.stop()
        await client.close()
    return rows


def bench_triton(port: int, requests: int) -> list[dict[str, Any]]:
    """A real tritonserver (toy models, 20 ms per token) driven in-process: TritonEnsemble streams opened
    directly (the local path) vs the same requests through the global scheduler (an idle peer polling)."""
    with tempfile.TemporaryDirectory() as tmp:
        proc, _ = _launch(Path(tmp) / "x", [])
        try:
            grpc_url = json.loads((Path(tmp) / "x" / "run" / "endpoints.json").read_text())["triton_grpc"]
            return asyncio.run(_bench_triton_async(port, grpc_url, requests))
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(60)


def _table(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [" | ".join(keys), " | ".join("---" for _ in keys)]
    lines += [" | ".join(fmt(r[k]) for k in keys) for r in rows]
    return "\n".join(lines)


def _plot(kind: str, rows: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    if kind in ("ttft", "triton", "stack"):
        xs = [str(r["concurrency"]) for r in rows]
        ax.bar([x + " local" for x in xs], [r["local_ttft_ms_p50"] for r in rows], label="local")
        ax.bar([x + " global" for x in xs], [r["global_ttft_ms_p50"] for r in rows], label="global")
        ax.set_ylabel("median TTFT (ms)")
        ax.set_title("TTFT: engine called directly vs through the global scheduler")
    else:
        ax.plot([r["clients_of_A"] for r in rows], [100 * r["share_B"] for r in rows], marker="o")
        ax.set_xlabel("concurrent clients of A (A and B: 4 slots each)")
        ax.set_ylabel("requests run by B (%)")
        ax.set_title("Work an idle instance takes from a loaded one")
    ax.legend() if kind in ("ttft", "triton", "stack") else None
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=("ttft", "share", "triton", "stack", "all"))
    p.add_argument("--requests", type=int, default=320, help="requests per point")
    p.add_argument("--out", type=Path, default=Path(REPO) / "run" / "bench_global_scheduler")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_redis(tmp)
        try:
            for kind in ("ttft", "share", "triton", "stack") if args.kind == "all" else (args.kind,):
                if kind == "stack":
                    rows = bench_stack(port, min(args.requests, 160))
                elif kind == "triton":
                    rows = bench_triton(port, args.requests)
                else:
                    fn = bench_ttft if kind == "ttft" else bench_share
                    rows = asyncio.run(fn(port, args.requests))
                print(f"\n## {kind}\n{_table(rows)}")
                (args.out / f"{kind}.json").write_text(json.dumps(rows, indent=2))
                _plot(kind, rows, args.out / f"{kind}.png")
        finally:
            proc.kill()
            proc.wait()
    print(f"\nwrote {args.out}/")


if __name__ == "__main__":
    main()
