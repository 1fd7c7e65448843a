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


# ---------------------------------------------------------------- decode
def _decode_run(path: str, tp: int, batches: list[int], steps: int, reps: int, q: Any) -> None:
    """One engine (fresh process): tokens/s of `steps` decode steps per batch size, median of reps."""
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
    result: dict[int, list[float]] = {}
    try:
        for rep in range(reps):
            for batch in batches:
                params = SamplingParams(max_tokens=steps + 4, temperature=0.0, ignore_eos=True)
                for i in range(batch):
                    prompt = [(7 * i + 3 * k) % 30000 + 3 for k in range(prompt_len)]
                    engine.add_request(f"b{batch}-{rep}-{i}", prompt, params)
                for _ in range(3):  # prefill, then two untimed decode steps
                    engine.step()
                t = time.perf_counter()
                tokens = sum(len(o.new_token_ids) for _ in range(steps) for o in engine.step())
                result.setdefault(batch, []).append(tokens / (time.perf_counter() - t))
                engine.run_until_done()
    finally:
        engine.shutdown()
    q.put({b: statistics.median(v) for b, v in result.items()})


def bench_decode(args: argparse.Namespace) -> None:
    path = args.model or _make_checkpoint(args.out + "_llama100m")
    batches = [int(b) for b in args.batches.split(",")]
    ctx = mp.get_context("spawn")
    runs: dict[int, list[dict[int, float]]] = {1: [], 2: []}
    for rnd in range(args.rounds):  # alternate TP=1 and TP=2 so slow periods hit both
        for tp in (1, 2):
            q = ctx.Queue()
            p = ctx.Process(target=_decode_run, args=(path, tp, batches, args.steps, args.reps, q))
            p.start()
            runs[tp].append(q.get(timeout=1800))
            p.join(60)
            load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
            print(f"round {rnd} TP={tp}: " + ", ".join(f"b{b} {v:.1f}" for b, v in runs[tp][-1].items())
                  + f"  (load average {load})", flush=True)
    med = {tp: {b: statistics.median(r[b] for r in runs[tp]) for b in batches} for tp in runs}
    print(f"\n{'batch':>6} {'TP=1 2 thr (tok/s)':>19} {'TP=2 1 thr/rank (tok/s)':>24} {'TP=2 / TP=1':>12}")
    for b in batches:
        print(f"{b:>6} {med[1][b]:19.1f} {med[2][b]:24.1f} {med[2][b] / med[1][b]:11.2f}x")
    _plot_decode(med, batches, args.out + "_decode.png")


def _make_checkpoint(out: str) -> str:
    from paddlellm.tools.make_tiny_model import TinySpec, make_tiny_model

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
    d.add_argument("--reps", type=int, default=3, help="repeats per point inside one engine")
    d.add_argument("--rounds", type=int, default=2, help="alternating TP=1 / TP=2 engine starts")
    d.add_argument("--out", default=os.path.join(REPO, "run", "bench_tp"))
    d.set_defaults(fn=bench_decode)
    args = ap.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
