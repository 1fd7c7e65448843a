"""The engine's time to first token offline: bench_serving.py's distinct chat prompts, one at a time,
`max_tokens=1`, on the default model (what a c=1 request costs the engine before the serving path).

    python benchmarks/bench_prefill.py [--cpu-kernels avx2] [--prompts 40] [--profile]
    python benchmarks/bench_prefill.py --ab TREE_A,TREE_B [--rounds 6] [same options]

Prints the median and fastest request (ms) and the prompts' length in tokens. --profile builds the
native library with -DPL_PROFILE and adds, per prefill, the fused pass's phases (team.h: thread 0's CPU time
after each phase's barrier). --ab runs this script alternately from several source trees (e.g. a `git archive`
of the base commit and the work tree), one process per tree and round, with distinct prompts per round, and
prints the median of the rounds' medians and of their fastest per tree: the machine is shared, so only
interleaved runs compare.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("norm", "quant_x", "qkv", "rope", "attn", "o", "gate", "up", "swiglu", "down")  # team.h PROF_*


def worker(args: argparse.Namespace) -> dict:
    sys.path.insert(0, args.tree)
    sys.path.insert(1, os.path.join(REPO, "benchmarks"))
    import ctypes

    from bench_serving import prompt

    from paddlellm.native import build

    if args.profile:
        build.COMMON_CFLAGS = (*build.COMMON_CFLAGS, "-DPL_PROFILE")
    from paddlellm.llm import LLM
    from paddlellm.sampling import SamplingParams

    llm = LLM(args.model, cpu_kernels=args.cpu_kernels, max_num_seqs=32)
    params = SamplingParams(max_tokens=1, temperature=0)
    for i in range(5):  # warm-up: scratch buffers, and the system prompt into the prefix cache
        llm.chat([prompt(args.offset + 10_000 + i)], params)
    prof = None
    if args.profile:
        maps = open("/proc/self/maps").read().splitlines()
        path = next(line.split()[-1] for line in maps if "libpaddlellm_" in line)
        prof = ctypes.CDLL(path).decode_profile_read
        buf = (ctypes.c_double * len(PHASES))()
        prof(buf)
    times, out = [], None
    for i in range(args.prompts):
        t0 = time.perf_counter()
        out = llm.chat([prompt(args.offset + i)], params)[0]
        times.append((time.perf_counter() - t0) * 1e3)
    res: dict = {"median_ms": statistics.median(times), "min_ms": min(times)}
    res["prompt_tokens"] = len(out.prompt_token_ids) if out else 0
    if prof:
        prof(buf)
        res["phases_ms"] = {p: v * 1e3 / args.prompts for p, v in zip(PHASES, buf, strict=True)}
    llm.shutdown()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="", help="checkpoint dir (default: the default model)")
    ap.add_argument("--cpu-kernels", default="auto")
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--offset", type=int, default=900_000, help="first prompt number")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument(
        "--ab", default="", help="TREE_A,TREE_B: interleaved rounds, a process per tree and round"
    )
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--tree", default=REPO, help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.model:  # this checkout's default model, whichever tree runs it
        sys.path.insert(0, REPO)
        from paddlellm.tools.default_model import default_dest

        args.model = default_dest()
    if args.json:
        print(json.dumps(worker(args)))
        return 0
    if not args.ab:
        r = worker(args)
        print(
            f"{args.cpu_kernels}: {r['prompt_tokens']} prompt tokens, median {r['median_ms']:.1f} ms, "
            f"fastest {r['min_ms']:.1f} ms"
        )
        for p, v in r.get("phases_ms", {}).items():
            print(f"| {p} | {v:.2f} ms |")
        return 0
    trees = [os.path.abspath(t) for t in args.ab.split(",")]
    got: dict[str, list[dict]] = {t: [] for t in trees}
    for rnd in range(args.rounds):
        for t in trees:
            argv = [
                sys.executable,
                os.path.abspath(__file__),
                "--json",
                "--tree",
                t,
                "--cpu-kernels",
                args.cpu_kernels,
                "--prompts",
                str(args.prompts),
                "--offset",
                str(args.offset + 1000 * rnd),
                "--model",
                args.model,
            ]
            proc = subprocess.run(argv, capture_output=True, text=True, check=True)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            got[t].append(r)
            print(f"round {rnd + 1} {t}: median {r['median_ms']:.1f} fastest {r['min_ms']:.1f}", flush=True)
    print(f"\n{args.rounds} interleaved rounds, {args.cpu_kernels} kernels, ms")
    print("| tree | median of medians | median of fastest |")
    print("|---|---:|---:|")
    for t in trees:
        med = statistics.median(r["median_ms"] for r in got[t])
        fast = statistics.median(r["min_ms"] for r in got[t])
        print(f"| {t} | {med:.1f} | {fast:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
