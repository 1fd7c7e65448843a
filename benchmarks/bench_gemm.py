"""The packed GEMM alone, per kernel ISA and micro-kernel shape, on SmolLM2's 30 layers of linear weights.

    python benchmarks/bench_gemm.py [--variants avx512_bf16,avx512,avx2,avx2:6x2] [--batches 1,8,32]
        [--dtype float32|bfloat16] [--threads 2] [--rounds 5] [--png FILE]

A variant is a kernel ISA, optionally with a micro-kernel shape `MRxNV` (rows x vectors; -DGEMM_MR/-DGEMM_NV)
to compare against the shape simd.h picks. Each variant's library is compiled from paddlellm/native into a
temporary directory (the engine's cache is not touched). Per batch size M, one round runs the qkv, o, gate,
up and down GEMMs of 30 layers (weights ~424 MB fp32, streamed from memory as in a decode step); the rounds of
all variants are interleaved and the best time per (variant, M) is kept, since other load on the machine moves
single runs by 10-30%. Prints a markdown table (ms per 30 layers, and the ratio to the first variant).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

LAYERS = 30
SHAPES = [(576, 960), (576, 576), (576, 1536), (576, 1536), (1536, 576)]  # (K, N): qkv, o, gate, up, down


def compile_variant(variant: str, out_dir: str) -> ctypes.CDLL:
    from paddlellm.native import build

    isa, _, shape = variant.partition(":")
    extra = []
    if shape:
        mr, nv = shape.lower().split("x")
        extra = [f"-DGEMM_MR={int(mr)}", f"-DGEMM_NV={int(nv)}"]
    src = build.SOURCES[0]
    out = os.path.join(out_dir, f"{variant.replace(':', '_')}.so")
    omp = build._paddle_omp_dir()  # the engine's OpenMP runtime (Paddle's libiomp5), as build.py links it
    link = [f"-L{omp}", "-l:libiomp5.so", f"-Wl,-rpath,{omp}"] if omp else ["-fopenmp"]
    cmd = ["cc", "-w", *build.COMMON_CFLAGS, *build.ISA_CFLAGS[isa], *extra, f"-I{src.parent}", "-shared",
           str(src), "-o", out, *link]
    subprocess.run(cmd, check=True)
    lib = ctypes.CDLL(out)
    ptr, c_long = ctypes.c_void_p, ctypes.c_long
    for fn in (lib.packed_sgemm, lib.packed_sgemm_bf16):
        fn.argtypes = [ptr, c_long, c_long, c_long, ptr, c_long, ptr, ptr, c_long, ctypes.c_int]
    return lib


def main() -> int:
    from paddlellm.cpu import read_cpu
    from paddlellm.layers.gemm import pack_panels, pack_panels_bf16

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default=",".join(read_cpu().kernel_isas))
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--png", default="", help="also plot the table to this PNG file")
    args = ap.parse_args()
    cpu = read_cpu()
    variants = args.variants.split(",")
    for v in variants:
        if v.partition(":")[0] not in cpu.kernel_isas:
            ap.error(f"{v}: this CPU runs only {cpu.kernel_isas}")
    batches = [int(b) for b in args.batches.split(",")]
    bf16 = args.dtype == "bfloat16"
    rng = np.random.default_rng(0)
    weights = [[rng.standard_normal((n, k), dtype=np.float32) for k, n in SHAPES] for _ in range(LAYERS)]
    tmp = tempfile.mkdtemp(prefix="bench_gemm_")
    runs = {}
    for v in variants:
        lib = compile_variant(v, tmp)
        nr = lib.packed_sgemm_panel_width()
        pack = pack_panels_bf16 if bf16 else pack_panels
        fn = lib.packed_sgemm_bf16 if bf16 else lib.packed_sgemm
        runs[v] = (fn, [[pack(w, nr) for w in layer] for layer in weights])
    best = {(v, m): float("inf") for v in variants for m in batches}
    for _ in range(args.rounds):
        for v, (fn, packed) in runs.items():
            for m in batches:
                xs = {k: rng.standard_normal((m, k), dtype=np.float32) for k, _ in SHAPES}
                ys = {n: np.empty((m, n), np.float32) for _, n in SHAPES}
                t0 = time.perf_counter()
                for layer in packed:
                    for (k, n), w in zip(SHAPES, layer, strict=True):
                        x, y = xs[k].ctypes.data, ys[n].ctypes.data
                        fn(x, m, k, k, w.ctypes.data, n, None, y, n, args.threads)
                best[v, m] = min(best[v, m], (time.perf_counter() - t0) * 1e3)
    print(f"\n{cpu.describe()}\n{args.dtype} weights, {args.threads} threads, best of {args.rounds}, "
          f"ms per {LAYERS} layers (ratio: first variant's time / this one's)\n")
    print("| variant | " + " | ".join(f"M={m}" for m in batches) + " |")
    print("|---|" + "---:|" * len(batches))
    for v in variants:
        cells = [f"{best[v, m]:.1f} ({best[variants[0], m] / best[v, m]:.2f}x)" for m in batches]
        print(f"| {v} | " + " | ".join(cells) + " |")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for v in variants:
            ax.plot(batches, [best[v, m] for m in batches], marker="o", label=v)
        ax.set_xlabel("rows (M)")
        ax.set_ylabel(f"ms per {LAYERS} layers")
        ax.set_title(f"packed GEMM, {args.dtype} weights")
        ax.legend()
        fig.savefig(args.png, dpi=100)
        print(f"\nwrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
