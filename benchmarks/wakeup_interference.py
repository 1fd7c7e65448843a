"""How much a small, bursty neighbour slows the engine's offline decode: the serving path's cost model.

    python benchmarks/wakeup_interference.py [--model DIR] [--batch 32] [--repeats 3]

The serving stack (tritonserver, the python-backend stubs, the gateway, the load generator) shares the cores
with the engine's math threads and works in many short bursts: one burst per process per response. This
script replays that shape without Triton: a neighbour process that wakes `rate` times a second and spins for
`burst_us` each time, beside `bench_engine.engine_bench` (the engine in-process, batch --batch). Each row uses
the same CPU share in different burst sizes, so the table shows whether the engine pays for the neighbour's
CPU or for its wake-ups. Prints a markdown table of decode tok/s (median over --repeats) and the slowdown.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / ".models" / "SmolLM2-135M-Instruct"

# (wake-ups per second, busy microseconds per wake-up): 10% of one core each, except the idle row. The sleep
# overshoots, so 2000/s comes out at ~1,650/s.
NEIGHBOURS = [(0, 0), (2000, 50), (20, 5000)]


def neighbour(rate: int, burst_us: int, stop: multiprocessing.synchronize.Event) -> None:
    """Sleep, spin `burst_us`, repeat: `rate` wake-ups a second (roughly: the sleep itself overshoots)."""
    period, burst = 1.0 / rate, burst_us * 1e-6
    x = 0
    while not stop.is_set():
        time.sleep(period - burst)
        end = time.perf_counter() + burst
        while time.perf_counter() < end:
            x += 1


def decode_tok_s(model: str, batch: int, threads: int) -> float:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_engine

    return bench_engine.isolated(bench_engine.engine_bench, model, [batch], 36, 64, 64, threads)[
        f"decode_b{batch}"
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="engine math threads (0: all cores)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    threads = args.threads or (multiprocessing.cpu_count() or 1)
    # Repeats outermost: the machine's speed drifts by 10-20% over minutes, so every row samples each period.
    runs: dict[tuple[int, int], list[float]] = {n: [] for n in NEIGHBOURS}
    for rep in range(args.repeats):
        for rate, burst_us in NEIGHBOURS:
            stop = multiprocessing.Event()
            proc = None
            if rate:
                proc = multiprocessing.Process(target=neighbour, args=(rate, burst_us, stop), daemon=True)
                proc.start()
            try:
                tok_s = decode_tok_s(str(args.model), args.batch, threads)
            finally:
                stop.set()
                if proc is not None:
                    proc.join(5)
            runs[(rate, burst_us)].append(tok_s)
            print(f"repeat {rep}, neighbour {rate}/s x {burst_us} us: {tok_s:.1f} tok/s", flush=True)
    rows = [(rate, burst_us, statistics.median(r), r) for (rate, burst_us), r in runs.items()]
    base = rows[0][2]
    print(f"\n{args.model.name}, batch {args.batch}, {threads} engine threads, median of {args.repeats}\n")
    print("| neighbour wake-ups/s | busy per wake-up | neighbour CPU | decode tok/s | vs no neighbour |")
    print("|---:|---:|---:|---:|---:|")
    for rate, burst_us, med, _ in rows:
        share = f"{rate * burst_us / 1e4:.0f}% of a core" if rate else "none"
        print(f"| {rate} | {burst_us} us | {share} | {med:.1f} | {med / base - 1:+.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
