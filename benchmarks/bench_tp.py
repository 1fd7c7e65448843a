"""Tensor-parallel benchmarks.

  python benchmarks/bench_tp.py allreduce   shm all-reduce vs paddle.distributed gloo, 2 ranks
  python benchmarks/bench_tp.py decode      decode tokens/s of a generated ~100M llama, TP=1 vs TP=2

Each prints a table and writes a PNG next to --out (default run/bench_tp_*.png). Run with
MKL_DEBUG_CPU_TYPE=5 in the environment; other load on the machine makes the numbers noisy, so every point
is the median of several repeats.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

AR_SHAPES = [(1, 576), (2, 576), (4, 576), (8, 576), (16, 576), (32, 576), (32, 49152)]


# ---------------------------------------------------------------- all-reduce
def _ar_rank(rank: int, world: int, spec: Any, endpoints: list[str], reps: int, q: Any) -> None:
    from paddlellm.executor.dist_env import apply_rank_env, configure_paddle, init_distributed

    apply_rank_env(rank, world, endpoints, device="cpu", threads=1)
    configure_paddle("cpu", threads=1)
    import numpy as np
    import paddle
    import paddle.distributed as dist

    from paddlellm.worker.shm_allreduce import ShmAllReduce

    ar = ShmAllReduce(spec, rank)
    init_distributed(device="cpu")
    results: dict[str, dict[str, float]] = {"shm": {}, "gloo": {}}
    # All shm shapes first: gloo leaves busy threads behind that would slow the shm runs.
    for kind in ("shm", "gloo"):
        fn = ar if kind == "shm" else dist.all_reduce
        x = paddle.zeros([8, 576])
        for _ in range(reps):  # settle both ranks (page faults, thread pools) before any timing
            fn(x)
        for shape in AR_SHAPES:
            n = reps if shape[1] < 10000 else max(20, reps // 10)
            x = paddle.zeros(shape)  # zeros: repeated in-place sums must not overflow
            for _ in range(10):
                fn(x)
            dist.barrier()
            times = []
            for _ in range(5):
                t = time.perf_counter()
                for _ in range(n):
                    fn(x)
                times.append((time.perf_counter() - t) / n)
            results[kind][str(shape)] = statistics.median(times)
    # Correctness spot check: sum of (r + 1) over ranks, bit-identical everywhere.
    x = paddle.to_tensor(np.full((4, 576), rank + 1, dtype=np.float32))
    ar(x)
    assert float(x.numpy()[0, 0]) == world * (world + 1) / 2
    st = ar.stats
    if rank == 0:
        waits = {"calls": st.calls, "spun": st.spun, "yielded": st.yielded, "slept": st.slept,
                 "mean_wait_us": round(st.wait_s / max(1, st.calls) * 1e6, 1),
                 "max_wait_ms": round(st.max_wait_s * 1e3, 2)}
        q.put((results, waits))
    ar.close()


def bench_allreduce(args: argparse.Namespace) -> None:
    from paddlellm.executor.dist_env import free_endpoints
    from paddlellm.worker.shm_allreduce import ShmGroup

    world = 2
    group = ShmGroup(f"bench{os.getpid()}", world)
    endpoints = free_endpoints(world)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_ar_rank, args=(r, world, group.spec, endpoints, args.reps, q))
             for r in range(world)]
    for p in procs:
        p.start()
    try:
        results, stats = q.get(timeout=600)
    finally:
        for p in procs:
            p.join(30)
        group.unlink()
    print(f"{'shape':>14} {'shm (us)':>10} {'gloo (us)':>10} {'speed-up':>9}")
    for shape in AR_SHAPES:
        s, g = results["shm"][str(shape)] * 1e6, results["gloo"][str(shape)] * 1e6
        print(f"{str(list(shape)):>14} {s:10.1f} {g:10.1f} {g / s:8.1f}x")
    print("shm wait phases (rank 0):", stats)
    _plot_allreduce(results, args.out + "_allreduce.png")


def _plot_allreduce(results: dict[str, dict[str, float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{a}x{b}" for a, b in AR_SHAPES]
    xs = range(len(labels))
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, kind in enumerate(("shm", "gloo")):
        ax.bar([x + i * 0.4 for x in xs], [results[kind][str(s)] * 1e6 for s in AR_SHAPES], 0.4, label=kind)
    ax.set_xticks([x + 0.2 for x in xs], labels, rotation=30)
    ax.set_yscale("log")
    ax.set_ylabel("us per all-reduce (2 ranks)")
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path)
    print("wrote", path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("allreduce")
    a.add_argument("--reps", type=int, default=500)
    a.add_argument("--out", default=os.path.join(REPO, "run", "bench_tp"))
    a.set_defaults(fn=bench_allreduce)
    args = ap.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    _ = tempfile  # used by the decode benchmark
    main()
