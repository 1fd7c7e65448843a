"""What `--enable-mm` costs a text-only request (issue #29 acceptance 4: nothing measurable, +-3 %).

    python benchmarks/mm_text_cost.py [--model VL_DIR | --size tiny|small] [--rounds 6] [--repeats 9]
        [--threads 2] [--out FILE]

Offline engines on one Qwen2.5-VL checkpoint (default: a random-weight one of scripts/make_tiny_vl_model.py,
built in a temp dir: `--size tiny`, whose steps are ~1 ms, so any per-step or per-request overhead of the
image path shows at its largest, or `--size small`, the default model's text dimensions and Qwen2.5-VL-3B's
vision tower, whose steps cost what a deployed small VL model's do), with enable_mm (vision tower loaded,
M-RoPE tables, image-aware runner and prefix-cache keys) and without. Workloads, text only, greedy,
ignore_eos:
- batch: 8 distinct 96-token prompts submitted together, 64 output tokens each (prefill + batched decode);
- single: one 96-token prompt, 64 output tokens (the per-step path at batch 1).
Each engine runs in a fresh process (in one process the engine built second ran ~4 % faster whichever it
was), off and on alternating, --rounds times each; a process runs each workload once untimed, then
--repeats times, and reports its median. The result per setting is the median over its rounds (tok/s =
output tokens / wall time); CPU time is this process's (all threads), which other jobs on a shared machine
disturb less than wall time. Both settings must produce identical tokens (checked). Prints a markdown table;
--out writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
MAX_TOKENS = 64


def _prompts(n: int, length: int, vocab: int) -> list[list[int]]:
    return [[(97 * i + 31 * k + 11) % (vocab - 1000) + 1 for i in range(length)] for k in range(n)]


def worker(model: str, enable_mm: bool, repeats: int, threads: int) -> dict:
    """One engine: per workload, the median wall seconds over `repeats` timed runs, and its tokens."""
    from paddlellm.llm import LLM
    from paddlellm.sampling import SamplingParams

    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    out = {}
    with LLM(model, max_model_len=1024, enable_mm=enable_mm, num_threads=threads, use_warmup=True) as llm:
        vocab = llm.engine.info.vocab_size
        for name, n in (("batch", 8), ("single", 1)):
            prompts = _prompts(n, 96, vocab)
            tokens = [list(c.token_ids) for c in llm.generate(prompts, params)]  # untimed
            times, cpu = [], []
            for _ in range(repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                llm.generate(prompts, params)
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            out[name] = {
                "seconds": statistics.median(times),
                "cpu_seconds": statistics.median(cpu),
                "requests": n,
                "tokens": tokens,
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a Qwen2.5-VL checkpoint dir (default: the tiny one, built now)")
    ap.add_argument("--size", choices=["tiny", "small"], default="tiny", help="the built checkpoint's size")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    ap.add_argument("--worker", choices=["off", "on"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.model, args.worker == "on", args.repeats, args.threads)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from paddlellm.tools.default_model import ensure_default_model
            from scripts.make_tiny_vl_model import make_tiny_vl_model

            model = make_tiny_vl_model(os.path.join(tmp, "vl"), ensure_default_model(), size=args.size)
        runs: dict[str, list[dict]] = {"off": [], "on": []}
        for r in range(args.rounds):
            for flag in ("off", "on") if r % 2 == 0 else ("on", "off"):
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", flag, "--model", model,
                       "--repeats", str(args.repeats), "--threads", str(args.threads)]  # fmt: skip
                done = subprocess.run(cmd, check=True, capture_output=True, text=True)
                runs[flag].append(json.loads(done.stdout.strip().splitlines()[-1]))
    rows = []
    for name in ("batch", "single"):
        if any(run[name]["tokens"] != runs["off"][0][name]["tokens"] for f in runs for run in runs[f]):
            raise SystemExit(f"{name}: enable_mm changed the tokens of text-only requests")
        secs = {f: [run[name]["seconds"] for run in runs[f]] for f in runs}
        cpu = {f: statistics.median(run[name]["cpu_seconds"] for run in runs[f]) for f in runs}
        out_tokens = MAX_TOKENS * runs["off"][0][name]["requests"]
        off, on = statistics.median(secs["off"]), statistics.median(secs["on"])
        rows.append(
            {
                "workload": name,
                "requests": runs["off"][0][name]["requests"],
                "off_tok_s": out_tokens / off,
                "on_tok_s": out_tokens / on,
                "on_vs_off_pct": 100.0 * (off / on - 1.0),
                "cpu_on_vs_off_pct": 100.0 * (cpu["on"] / cpu["off"] - 1.0),
                "off_s": secs["off"],
                "on_s": secs["on"],
            }
        )
    name = args.model or f"random-weight Qwen2.5-VL, --size {args.size} (scripts/make_tiny_vl_model.py)"
    print(f"model: {name}, threads {args.threads}, {args.rounds} processes per setting x {args.repeats} runs")
    print("| workload | requests | enable_mm off tok/s | on tok/s | on vs off (tok/s) | CPU time on vs off |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['workload']} | {r['requests']} | {r['off_tok_s']:.0f} | {r['on_tok_s']:.0f} | "
            f"{r['on_vs_off_pct']:+.1f} % | {r['cpu_on_vs_off_pct']:+.1f} % |"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
