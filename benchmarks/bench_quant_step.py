"""A batch-B decode step of the default model's shape (SmolLM2-135M: 30 layers, hidden 576, 9 q / 3 kv heads
of 64, MLP 1536, vocabulary 49,152) with quantized weights, straight on the native kernels: the fused pass
(`decode_layers`) and the LM head, plus each linear shape alone over its 30 layers' weights.

    python benchmarks/bench_quant_step.py [--isa avx2] [--quantization wint4] [--batches 1,8,32]
        [--steps 30] [--context 96] [--threads 2] [--kv-cache-dtype float16] [--cpu-time] [--profile]
    python benchmarks/bench_quant_step.py --ab TREE_A,TREE_B[,...] [--rounds 5] [same options]

Random weights in the default model's form (GGUF-like Q4_1 blocks for the layers, which wint8 re-quantizes,
and a Q8_0 head, all with fp16 scales; the kernels' speed does not depend on the values), each layer its own
copy, so a step streams its ~66 MB (wint4) from memory as a real one does. Times are medians over --steps
calls: wall clock, or with --cpu-time CPU time, which on a loaded machine leaves out the time other processes
had the cores: with --threads 1 the calling thread's (the kernels run on it); with more, the whole process's,
meaningful with KMP_BLOCKTIME=0 in the environment (OpenMP's idle threads then sleep at once instead of
spinning, so the CPU time is the work plus the cost of synchronising).
--profile builds the library with -DPL_PROFILE (team.h: phase timers in the fused pass, thread 0 after each
phase's barrier) and prints where a step's time goes, with each GEMM's bytes and GB/s.
--ab runs this script alternately from several source trees (e.g. a `git archive` of the base commit and the
work tree), one process per tree and round, and prints the median of the rounds' medians per tree (and the
fastest step of any round): the machine is shared, so only interleaved runs compare.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTER, VOCAB = 30, 576, 9, 3, 64, 1536, 49152
QKV = (HEADS + 2 * KV_HEADS) * HEAD_DIM
SHAPES = {
    "qkv": (HIDDEN, QKV),
    "o": (HEADS * HEAD_DIM, HIDDEN),
    "gate": (HIDDEN, INTER),
    "up": (HIDDEN, INTER),
    "down": (INTER, HIDDEN),
}  # (K, N)
PHASES = ("norm", "quant_x", "qkv", "rope", "attn", "o", "gate", "up", "swiglu", "down")  # team.h PROF_*


def weight_bytes(layer: object) -> int:
    """Bytes a GEMM reads per call: its packed tensors (weights and per-block tables, whatever the layout)."""
    tensors = [layer.packed] if hasattr(layer, "packed") else list(layer.tensors)  # type: ignore[attr-defined]
    return sum(int(t.numel()) * t.element_size() for t in tensors)


def worker(args: argparse.Namespace) -> dict:
    sys.path.insert(0, args.tree)
    import ctypes

    import paddle

    from paddlellm.cpu import read_cpu
    from paddlellm.layers import quant_gemm as qg
    from paddlellm.layers.decode_step import DecodeShape, FusedDecode, LayerSpec
    from paddlellm.native import build

    paddle.set_device("cpu")
    if not args.cpu_time:
        clock = time.perf_counter
    else:  # one thread: the caller's CPU time; more: the process's (every thread's), see the docstring
        clock = time.thread_time if args.threads == 1 else time.process_time
    if args.profile:
        build.COMMON_CFLAGS = (*build.COMMON_CFLAGS, "-DPL_PROFILE")
    native = build.load(args.isa, read_cpu())
    threads = args.threads
    rng = np.random.default_rng(0)
    gemm = qg.Int4Gemm(native, threads) if args.quantization == "wint4" else qg.Int8Gemm(native, threads)
    from paddlellm.quant_blocks import BlockQuantized

    def blocks(kind: str, n: int, k: int) -> BlockQuantized:
        """Random GGUF-like blocks (fp16 scales): what the default model's converter stores."""
        d = rng.uniform(0.002, 0.02, (n, k // 32)).astype(np.float16).astype(np.float32)
        if kind == "q8_0":
            return BlockQuantized(kind, rng.integers(-128, 128, (n, k)).astype(np.int8), d, None)
        m = -8 * d
        return BlockQuantized(kind, rng.integers(0, 16, (n, k)).astype(np.uint8), d, m)

    # The default model's weights as stored: Q4_1 layers (wint4; wint8 re-quantizes them) and a Q8_0 head.
    # Each shape is quantized once; every layer gets its own copy of the packed tensors.
    base = {name: blocks("q4_1", n, k) for name, (k, n) in SHAPES.items()}
    dense = {name: b.dequantize() for name, b in base.items()}
    as_stored = args.quantization == "wint4"
    layers = [
        {name: gemm.weight(dense[name], None, base[name] if as_stored else None) for name in SHAPES}
        for _ in range(LAYERS)
    ]
    hb = blocks("q8_0", VOCAB, HIDDEN)
    head = gemm.head_weight(hb.dequantize(), None, hb)
    ones = paddle.ones([HIDDEN], "float32")
    specs = [LayerSpec(*(ly[n].spec() for n in SHAPES), ones.data_ptr(), ones.data_ptr()) for ly in layers]
    fused = FusedDecode(
        native, threads, specs, DecodeShape(HIDDEN, HEADS, KV_HEADS, HEAD_DIM, 1e-5, ones.data_ptr())
    )
    prof = getattr(native.lib, "decode_profile_read", None)
    out: dict = {
        "isa": native.isa,
        "path": str(native.path),
        "batches": {},
        "bytes": {name: weight_bytes(layers[0][name]) for name in SHAPES},
        "head_bytes": weight_bytes(head),
    }
    for b in args.batches:
        ctx = args.context
        L = ctx
        num_slots = b * L
        caches = [
            paddle.to_tensor(
                rng.standard_normal((2 * KV_HEADS * num_slots, HEAD_DIM)).astype(args.kv_cache_dtype)
            )
            for _ in range(LAYERS)
        ]
        x = paddle.to_tensor(rng.standard_normal((b, HIDDEN)).astype(np.float32))
        ang = rng.random((b, HEAD_DIM)).astype(np.float32)
        cos, sin = paddle.to_tensor(np.cos(ang)), paddle.to_tensor(np.sin(ang))
        slots = np.arange(b * L, dtype=np.int64).reshape(b, L)
        new_slots = paddle.to_tensor(slots[:, ctx - 1].copy())
        slots_t = paddle.to_tensor(slots)
        rows = paddle.to_tensor(np.arange(b, dtype=np.int64))
        lens = paddle.to_tensor(np.full(b, ctx, np.int64))
        step_ms, head_ms = [], []
        phases = np.zeros(len(PHASES))
        buf = (ctypes.c_double * len(PHASES))()
        for i in range(args.steps + 3):
            if prof:
                prof(buf)
            t0 = clock()
            h = fused(x, cos, sin, new_slots, slots_t, rows, lens, caches)
            t1 = clock()
            if prof:
                prof(buf)
                if i >= 3:
                    phases += np.frombuffer(buf, np.float64)
            head(h)
            t2 = clock()
            if i >= 3:
                step_ms.append((t1 - t0) * 1e3)
                head_ms.append((t2 - t1) * 1e3)
        res = {
            "step_ms": statistics.median(step_ms),
            "head_ms": statistics.median(head_ms),
            "step_min_ms": min(step_ms),  # on a shared machine, the steps no other process interrupted
            "head_min_ms": min(head_ms),
        }
        if prof:
            res["phases_ms"] = {p: v * 1e3 / args.steps for p, v in zip(PHASES, phases, strict=True)}
        # each linear shape alone: its 30 layers' weights in a row (each call its own parallel region), the
        # caches flushed before each round (30 layers of one shape would otherwise sit in a 32 MB L3)
        xs = {k: paddle.to_tensor(rng.standard_normal((b, k)).astype(np.float32)) for k in (HIDDEN, INTER)}
        ys = {n: paddle.empty([b, n], "float32") for n in (HIDDEN, QKV, INTER)}
        gemm_ms = {}
        evict = np.ones(
            16 << 20, np.float32
        )  # 64 MB, twice the L3 here: each round reads its weights from DRAM
        for name, (k, n) in SHAPES.items():
            ts = []
            for i in range(max(5, args.steps // 3) + 2):
                evict += 1.0
                t0 = clock()
                for ly in layers:
                    ly[name]._run(xs[k].data_ptr(), b, k, ys[n].data_ptr(), n)
                if i >= 2:
                    ts.append((clock() - t0) * 1e3)
            gemm_ms[name] = statistics.median(ts)
        res["gemm_ms"] = gemm_ms
        out["batches"][str(b)] = res
    return out


def report(results: dict, args: argparse.Namespace) -> None:
    q = args.quantization
    for b, r in results["batches"].items():
        step, head = r["step_ms"], r["head_ms"]
        print(f"\n## {results['isa']}, {q}, batch {b}: step {step:.2f} ms + LM head {head:.2f} ms")
        head_bytes = results["head_bytes"]
        print(f"LM head: {head_bytes / 1e6:.1f} MB, {head_bytes / r['head_ms'] / 1e6:.1f} GB/s")
        print("| GEMM (30 layers, alone) | K x N | MB | ms | GB/s |")
        print("|---|---|---:|---:|---:|")
        total = 0.0
        for name, (k, n) in SHAPES.items():
            mb = results["bytes"][name] * LAYERS / 1e6
            total += mb
            ms = r["gemm_ms"][name]
            print(f"| {name} | {k} x {n} | {mb:.1f} | {ms:.2f} | {mb / ms:.1f} |")
        print(f"layers' weights {total:.1f} MB; fused step {total / r['step_ms']:.1f} GB/s")
        if "phases_ms" in r:
            print("| phase in the fused step | ms | share |")
            print("|---|---:|---:|")
            for p, v in r["phases_ms"].items():
                print(f"| {p} | {v:.2f} | {100 * v / r['step_ms']:.0f} % |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--isa", default="avx2")
    ap.add_argument("--quantization", choices=("wint4", "wint8"), default="wint4")
    ap.add_argument("--batches", default="1")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--context", type=int, default=96, help="cached tokens each request attends to")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kv-cache-dtype", choices=("float32", "float16"), default="float16")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument(
        "--cpu-time", action="store_true", help="CPU time instead of wall clock (see the docstring)"
    )
    ap.add_argument("--tree", default=REPO, help="source tree to import paddlellm from")
    ap.add_argument("--json", action="store_true", help="print the raw JSON (worker output)")
    ap.add_argument(
        "--ab", default="", help="TREE_A,TREE_B: interleaved rounds, one process per tree and round"
    )
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    args.batches = [int(b) for b in str(args.batches).split(",")]
    if not args.ab:
        res = worker(args)
        if args.json:
            print(json.dumps(res))
        else:
            report(res, args)
        return 0
    trees = [os.path.abspath(t) for t in args.ab.split(",")]
    runs: dict[str, list[dict]] = {t: [] for t in trees}
    passthrough = (
        [
            "--isa",
            args.isa,
            "--quantization",
            args.quantization,
            "--batches",
            ",".join(map(str, args.batches)),
            "--steps",
            str(args.steps),
            "--context",
            str(args.context),
            "--threads",
            str(args.threads),
            "--kv-cache-dtype",
            args.kv_cache_dtype,
            "--json",
        ]
        + (["--cpu-time"] if args.cpu_time else [])
        + (["--profile"] if args.profile else [])
    )
    for r in range(args.rounds):
        for t in trees if r % 2 == 0 else trees[::-1]:
            env = dict(os.environ, PYTHONPATH=t)
            cmd = [sys.executable, os.path.abspath(__file__), "--tree", t, *passthrough]
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if p.returncode:
                sys.stderr.write(p.stderr[-3000:])
                return 1
            runs[t].append(json.loads(p.stdout.strip().splitlines()[-1]))
            b0 = runs[t][-1]["batches"]
            print(
                f"round {r} {t}: "
                + ", ".join(f"b={b} step {v['step_ms']:.2f} head {v['head_ms']:.2f}" for b, v in b0.items()),
                flush=True,
            )
    print(f"\n{args.rounds} interleaved rounds, {args.isa}, {args.quantization}, ms: medians of the rounds'")
    print("medians, and the least step / head time of any round (min)")
    cols = ["step", "head", "step min", "head min", *SHAPES]
    print("| tree | batch | " + " | ".join(cols) + " |")
    print("|---|---:|" + "---:|" * len(cols))
    for t in trees:
        for b in map(str, args.batches):
            rs = [run["batches"][b] for run in runs[t]]
            keys = ["step_ms", "head_ms", "step_min_ms", "head_min_ms"]
            vals = [statistics.median(x[k] for x in rs) for k in keys[:2]]
            vals += [min(x[k] for x in rs) for k in keys[2:]]
            vals += [statistics.median(x["gemm_ms"][n] for x in rs) for n in SHAPES]
            print(f"| {t} | {b} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    if args.profile:
        print("\nphases of the fused step (medians of the rounds, ms; trees built with the PL_PROFILE hooks)")
        print("| tree | batch | " + " | ".join(PHASES) + " |")
        print("|---|---:|" + "---:|" * len(PHASES))
        for t in trees:
            for b in map(str, args.batches):
                rs = [run["batches"][b].get("phases_ms") for run in runs[t]]
                if all(rs):
                    vals = [statistics.median(x[p] for x in rs) for p in PHASES]
                    print(f"| {t} | {b} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
