"""Tensor-parallel benchmarks.

  python benchmarks/bench_tp.py allreduce   shm all-reduce vs paddle.distributed gloo, 2 ranks
  python benchmarks/bench_tp.py decode      decode tokens/s of a generated ~100M llama, TP=1 vs TP=2
  python benchmarks/bench_tp.py channel     encode + decode of one signed decode Step (the rank channel)

Each prints a table and writes a PNG next to --out (default run/bench_tp_*.png).
Other load on the machine makes the numbers noisy, so every point is the median of several repeats.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

AR_SHAPES = [(1, 576), (2, 576), (4, 576), (8, 576), (16, 576), (32, 576), (32, 49152)]


# ---------------------------------------------------------------- all-reduce
def _ar_rank(rank: int, world: int, spec: Any, endpoints: list[str], reps: int, q: Any) -> None:
    from paddlellm.executor.dist_env import apply_rank_env, configure_paddle, init_distributed

    apply_rank_env(rank, world, endpoints, device="cpu")
    configure_paddle("cpu", threads=1)
    import numpy as np
    import paddle
    import paddle.distributed as dist

    from paddlellm.worker.shm_allreduce import ShmAllReduce

    ar = ShmAllReduce(spec, rank)
    init_distributed()
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
    from paddlellm.ports import free_endpoints
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


# ---------------------------------------------------------------- channel
def bench_channel(args: argparse.Namespace) -> None:
    """The per-step cost the rank channel adds (pickle + HMAC both ways): it must stay far below a decode
    step (tens of ms). tests/tp/test_messages.py bounds the message size instead, which is load-proof."""
    from paddlellm.executor.rank_messages import Step, decode, encode
    from paddlellm.sampling import SamplingParams
    from paddlellm.step_types import CachedRequestData, NewRequestData, SchedulerOutput

    key = os.urandom(32)
    print(f"{'requests':>9} {'bytes':>7} {'us/step':>8}")
    for n in (1, 8, 32, 256):
        new = (NewRequestData("new", (1, 2, 3), (), SamplingParams(temperature=0.5, seed=3), 3, (0, 1), 0),)
        cached = tuple(CachedRequestData(f"req-{i}", (5,), (), 100 + i) for i in range(n))
        msg = Step(4, SchedulerOutput(new, cached, {"new": 3} | {c.request_id: 1 for c in cached}))
        times = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(args.reps):
                decode(encode(msg, key), key)
            times.append((time.perf_counter() - t) / args.reps)
        print(f"{n:>9} {len(encode(msg, key)):>7} {statistics.median(times) * 1e6:8.1f}")


# ---------------------------------------------------------------- decode
def _decode_server(path: str, tp: int, batches: list[int], steps: int, conn: Any) -> None:
    """One engine in its own process, measuring on request: recv batch size -> send tokens/s (None: stop)."""
    from paddlellm.config import EngineConfig
    from paddlellm.engine.core import LLMEngine
    from paddlellm.model_info import ModelInfo
    from paddlellm.sampling import SamplingParams

    prompt_len, blocks = 64, 2048
    config = EngineConfig(model=path, tensor_parallel_size=tp, num_threads=2 if tp == 1 else 1,
                          max_model_len=prompt_len + steps + 16, block_size=16, max_num_seqs=max(batches),
                          max_num_batched_tokens=4096, num_gpu_blocks_override=blocks)
    info = ModelInfo.from_dir(path)
    if tp == 1:
        from paddlellm.executor.inproc import InprocExecutor

        executor: Any = InprocExecutor(config, info, blocks)
    else:
        from paddlellm.executor.multiproc import MultiprocExecutor

        executor = MultiprocExecutor(config, info, blocks)
    engine = LLMEngine(config, executor, info, blocks)
    conn.send("ready")
    n = 0
    try:
        while (batch := conn.recv()) is not None:
            params = SamplingParams(max_tokens=steps + 4, temperature=0.0, ignore_eos=True)
            for _ in range(batch):
                n += 1
                prompt = [(7 * n + 3 * k) % 30000 + 3 for k in range(prompt_len)]
                engine.add_request(f"r{n}", prompt, params)
            for _ in range(3):  # prefill, then two untimed decode steps
                engine.step()
            t = time.perf_counter()
            tokens = sum(len(o.new_token_ids) for _ in range(steps) for o in engine.step())
            conn.send(tokens / (time.perf_counter() - t))
            engine.run_until_done()
    finally:
        engine.shutdown()


def bench_decode(args: argparse.Namespace) -> None:
    """Both engines stay up and take turns point by point (the idle one sleeps in a poll), so load from
    other jobs on the machine hits both alike; report the median and the best of the repeats."""
    path = args.model or _make_checkpoint(args.out + "_llama100m")
    batches = [int(b) for b in args.batches.split(",")]
    ctx = mp.get_context("spawn")
    conns, procs = {}, []
    for tp in (1, 2):
        mine, theirs = ctx.Pipe()
        p = ctx.Process(target=_decode_server, args=(path, tp, batches, args.steps, theirs))
        p.start()
        procs.append(p)
        conns[tp] = mine
    for c in conns.values():
        assert c.recv() == "ready"
    runs: dict[int, dict[int, list[float]]] = {1: {b: [] for b in batches}, 2: {b: [] for b in batches}}
    loads = []
    try:
        for rep in range(args.reps):
            for b in batches:
                for tp in ((1, 2) if rep % 2 == 0 else (2, 1)):
                    time.sleep(0.3)  # let the other engine's OpenMP threads stop spinning
                    conns[tp].send(b)
                    runs[tp][b].append(conns[tp].recv())
            loads.append(os.getloadavg()[0])
            points = "  ".join(f"b{b} {runs[1][b][-1]:.1f} / {runs[2][b][-1]:.1f}" for b in batches)
            print(f"rep {rep}: {points}  (TP=1 / TP=2 tok/s; load {loads[-1]:.2f})", flush=True)
    finally:
        for c in conns.values():
            c.send(None)
        for p in procs:
            p.join(60)
    med = {tp: {b: statistics.median(runs[tp][b]) for b in batches} for tp in runs}
    best = {tp: {b: max(runs[tp][b]) for b in batches} for tp in runs}
    # Each repeat measures TP=1 and TP=2 seconds apart: the ratio within a pair sees the least drift.
    pair = {b: statistics.median(t2 / t1 for t1, t2 in zip(runs[1][b], runs[2][b], strict=True))
            for b in batches}
    print(f"\n{args.reps} repeats of {args.steps} decode steps per point; 1-min load average during the run "
          f"{min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores (this benchmark itself adds ~2)")
    print(f"{'batch':>6} {'TP=1 2 thr':>11} {'TP=2 1 thr/rank':>16} {'paired ratio':>13} {'best TP=1':>10} "
          f"{'best TP=2':>10} {'ratio':>6}")
    print(f"{'':>6} {'median tok/s':>11} {'median tok/s':>16} {'median':>13}")
    for b in batches:
        print(f"{b:>6} {med[1][b]:11.1f} {med[2][b]:16.1f} {pair[b]:12.2f}x {best[1][b]:10.1f} "
              f"{best[2][b]:10.1f} {best[2][b] / best[1][b]:5.2f}x")
    _plot_decode(med, batches, args.out + "_decode.png")


def _make_checkpoint(out: str) -> str:
    from scripts.make_tiny_model import TinySpec, make_tiny_model

    if not os.path.isfile(os.path.join(out, "config.json")):
        make_tiny_model(TinySpec(arch="llama", tokenizer="llama2", size="100m", tie=False), out)
    return out


def _plot_decode(med: dict[int, dict[int, float]], batches: list[int], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = range(len(batches))
    for i, (tp, label) in enumerate(((1, "TP=1, 2 threads"), (2, "TP=2, 1 thread/rank"))):
        ax.bar([x + i * 0.4 for x in xs], [med[tp][b] for b in batches], 0.4, label=label)
    ax.set_xticks([x + 0.2 for x in xs], [f"batch {b}" for b in batches])
    ax.set_ylabel("decode tokens/s (~100M llama, CPU)")
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
    d = sub.add_parser("decode")
    d.add_argument("--model", default="", help="checkpoint dir (default: generate a ~100M llama under --out)")
    d.add_argument("--batches", default="1,8,32")
    d.add_argument("--steps", type=int, default=32, help="timed decode steps per point")
    d.add_argument("--reps", type=int, default=7, help="repeats per point, TP=1 and TP=2 taking turns")
    d.add_argument("--out", default=os.path.join(REPO, "run", "bench_tp"))
    d.set_defaults(fn=bench_decode)
    c = sub.add_parser("channel")
    c.add_argument("--reps", type=int, default=2000)
    c.set_defaults(fn=bench_channel)
    args = ap.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
