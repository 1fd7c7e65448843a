"""Engine throughput on this CPU beside transformers' generate on the same weights.

    python benchmarks/bench_engine.py [--model DIR ...] [--batches 1,8,32] [--prompt-len 32]
        [--new-tokens 128] [--prefill-len 512] [--threads 2] [--repeats 2] [--no-hf] [--out DIR]
        [--variants auto,avx2,avx2:bfloat16,paddle] [--cpu-clock]

Default models: SmolLM2-135M (<repo>/.models/SmolLM2-135M-Instruct) and a generated ~15M Llama
(make_tiny_model --size 15m, built once into .models/llama-15m-bench). Per model and batch size B, B greedy
requests with random --prompt-len-token prompts generate --new-tokens tokens each, submitted together.
- decode tok/s = B * (new_tokens - 1) / (time from the step where every request has its first token to the
  end), so prefill is excluded;
- prefill tok/s = prefill_len / time of one request of --prefill-len tokens with max_tokens=1.
transformers runs the same workload in its own process (torch threads = --threads; its prefill is timed as
one forward of the batch and subtracted from generate's time). The machine is shared, so every point is
measured --repeats times (alternating implementations) and the best is kept. --variants lists the engine
configurations to compare, each `cpu_kernels[:dtype][@avx2cpu]` (e.g. `avx512_bf16`, `avx2` forced on an
AVX-512 machine, `avx2:bfloat16`, `paddle`; `@avx2cpu` runs it as an AVX2-only CPU would: that CPU's
description and MKL capped at AVX2). --cpu-clock times the engine with its process's CPU time (tokens per
CPU-second; with --threads 1 what other jobs on a shared machine take of the cores is left out). Prints a
markdown table (with the CPU's model name) and writes results.json and bench_engine.png to --out.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _busy_seconds() -> float:
    """CPU seconds every process on the machine has run since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _others_share(busy0: float, own0: float, wall0: float) -> float:
    """Share of the machine's CPUs other processes used since (busy0, own0, wall0): what a timed region lost
    to other jobs on a shared machine (0 on a quiet one; jiffies make it +-1 % for a second-long region)."""
    wall = time.perf_counter() - wall0
    others = (_busy_seconds() - busy0) - (time.process_time() - own0)
    return max(0.0, others) / (wall * (os.cpu_count() or 1))


def engine_bench(
    path: str,
    batches: list[int],
    prompt_len: int,
    new_tokens: int,
    prefill_len: int,
    threads: int,
    cpu_kernels: str = "auto",
    dtype: str = "float32",
    quantization: str = "auto",  # the engine's default: a GGUF's quantized blocks run as stored
    enforce_eager: bool = False,
    cpu_clock: bool = False,
) -> dict[str, float]:
    from paddlellm.config import EngineConfig
    from paddlellm.engine.core import LLMEngine
    from paddlellm.sampling import SamplingParams

    config = EngineConfig(
        model=path,
        max_model_len=2048,
        max_num_seqs=max(batches),
        num_threads=threads,
        max_num_batched_tokens=2048,
        use_warmup=True,
        cpu_kernels=cpu_kernels,
        dtype=dtype,
        quantization=quantization,
        enforce_eager=enforce_eager,
    )
    engine = LLMEngine.create(config)
    clock = time.process_time if cpu_clock else time.perf_counter
    vocab = engine.info.vocab_size
    rng = np.random.default_rng(0)
    res: dict[str, float] = {}
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    for b in batches:
        for i in range(b):
            engine.add_request(f"b{b}-{i}", rng.integers(3, vocab, prompt_len).tolist(), params)
        started: set[str] = set()
        t_first = None
        while engine.has_unfinished():
            for out in engine.step():
                if out.new_token_ids:
                    started.add(out.request_id)
            if t_first is None and len(started) == b:
                t_first = clock()
                marks = (_busy_seconds(), time.process_time(), time.perf_counter())
        assert t_first is not None
        res[f"decode_b{b}"] = b * (new_tokens - 1) / (clock() - t_first)
        res[f"others_b{b}"] = _others_share(*marks)
    engine.add_request(
        "prefill", rng.integers(3, vocab, prefill_len).tolist(), SamplingParams(max_tokens=1, temperature=0.0)
    )
    t0 = clock()
    engine.run_until_done()
    res["prefill"] = prefill_len / (clock() - t0)
    engine.shutdown()
    return res


def hf_bench(
    path: str, batches: list[int], prompt_len: int, new_tokens: int, prefill_len: int, threads: int
) -> dict[str, float]:
    import torch
    import transformers

    torch.set_num_threads(threads)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    rng = np.random.default_rng(0)
    res: dict[str, float] = {}
    with torch.no_grad():
        for b in batches:
            ids = torch.tensor(rng.integers(3, vocab, (b, prompt_len)))
            model.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=0)  # warm
            t0 = time.perf_counter()
            model(ids)
            t_prefill = time.perf_counter() - t0
            t0 = time.perf_counter()
            model.generate(
                ids,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
                eos_token_id=None,
            )
            res[f"decode_b{b}"] = b * (new_tokens - 1) / (time.perf_counter() - t0 - t_prefill)
        ids = torch.tensor(rng.integers(3, vocab, (1, prefill_len)))
        t0 = time.perf_counter()
        model(ids, logits_to_keep=1)
        res["prefill"] = prefill_len / (time.perf_counter() - t0)
    return res


# A variant suffixed `@avx2cpu` runs as an AVX2-only machine would have it: the engine reads a Zen 3's CPU
# description (so it selects what such a CPU gets) and MKL is capped at AVX2 (Paddle's matmul on that path).
AVX2_CPU_ENV = {
    "PADDLELLM_CPUINFO": os.path.join(REPO, "tests", "fakes", "cpuinfo_avx2_zen3"),
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}


def _set_env(env: dict[str, str]) -> None:
    os.environ.update(env)


def isolated(fn, *args, env: dict[str, str] | None = None):  # noqa: ANN001, ANN002, ANN201
    """Run fn in a fresh process: paddle and torch bring different OpenMP runtimes and thread settings."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx, initializer=_set_env, initargs=(env or {},)) as pool:
        return pool.submit(fn, *args).result()


def ensure_15m() -> str:
    """The generated ~15M Llama (SmolLM2's tokenizer and vocabulary), built once into .models/."""
    from paddlellm.tools.default_model import default_dest
    from scripts.make_tiny_model import TinySpec, make_tiny_model

    path = os.path.join(REPO, ".models", "llama-15m-bench")
    if not os.path.isfile(os.path.join(path, "config.json")):
        make_tiny_model(
            TinySpec(arch="llama", tokenizer="smollm", size="15m"), path, smollm_dir=default_dest()
        )
    return path


def plot(results: dict[str, dict[str, dict[str, float]]], batches: list[int], file: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, (model, by_impl) in zip(axes[0], results.items(), strict=True):
        width = 0.8 / len(by_impl)
        for k, (impl, r) in enumerate(by_impl.items()):
            xs = np.arange(len(batches)) + k * width
            ax.bar(xs, [r[f"decode_b{b}"] for b in batches], width, label=impl)
        ax.set_xticks(
            np.arange(len(batches)) + width * (len(by_impl) - 1) / 2, [f"batch {b}" for b in batches]
        )
        ax.set_ylabel("decode tokens/s")
        ax.set_title(model)
        ax.legend()
    fig.tight_layout()
    fig.savefig(file, dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model", action="append", help="checkpoint dir (repeatable); default: SmolLM2 + 15M llama"
    )
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prefill-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="runs per implementation; the best is kept")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers reference")
    ap.add_argument(
        "--variants",
        default="auto",
        help="comma-separated engine variants cpu_kernels[:dtype or quantization][+eager][@avx2cpu], e.g. "
        "auto,avx2,avx2:bfloat16,auto:wint8,auto:wint4+eager,paddle (+eager: --enforce-eager, the layer-by-"
        "layer path instead of the fused native forward)",
    )
    ap.add_argument(
        "--cpu-clock",
        action="store_true",
        help="time the engine with its process's CPU time instead of the wall clock: on a machine other jobs "
        "load, tokens per CPU-second leave out the time they had the cores (use with --threads 1: with more, "
        "OpenMP's spinning threads count too)",
    )
    ap.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    batches = [int(b) for b in args.batches.split(",")]
    models = args.model or [os.path.join(REPO, ".models", "SmolLM2-135M-Instruct"), ensure_15m()]
    work = (batches, args.prompt_len, args.new_tokens, args.prefill_len, args.threads)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for path in models:
        name = os.path.basename(path.rstrip("/"))
        impls = {}
        envs: dict[str, dict[str, str]] = {}
        for variant in args.variants.split(","):
            spec, _, cpu = variant.partition("@")
            spec, eager, _ = spec.partition("+eager")
            kernels, _, dtype = spec.partition(":")
            label = "paddlellm" if variant == "auto" else f"paddlellm ({kernels}, {dtype or 'auto'})"
            label += ", eager" if eager else ""
            if cpu:
                if cpu != "avx2cpu":
                    ap.error(f"--variants: unknown CPU {cpu!r} in {variant!r} (known: avx2cpu)")
                label += " as on an AVX2-only CPU"
                envs[label] = AVX2_CPU_ENV
            # no weight type: the engine's default (--quantization auto); a dtype: those weights, unquantized
            weights: dict[str, str] = (
                {"quantization": dtype} if dtype.startswith("wint")
                else {"dtype": dtype, "quantization": "none"} if dtype else {}
            )
            impls[label] = functools.partial(
                engine_bench,
                cpu_kernels=kernels,
                enforce_eager=bool(eager),
                cpu_clock=args.cpu_clock,
                **weights,
            )
        if not args.no_hf:
            impls["transformers"] = hf_bench
        results[name] = {}
        for _ in range(args.repeats):
            for impl, fn in impls.items():
                run = isolated(fn, path, *work, env=envs.get(impl))
                best = results[name].setdefault(impl, run)
                for key, value in run.items():
                    best[key] = max(best[key], value)
    cols = [f"decode b={b}" for b in batches] + [f"prefill ({args.prefill_len})"]
    from paddlellm.cpu import read_cpu

    print(
        f"\n{read_cpu().describe()}\ntokens/s, {args.threads} threads, prompt {args.prompt_len}, "
        f"{args.new_tokens} new tokens\n"
    )
    print("| model | impl | " + " | ".join(cols) + " |")
    print("|---|---|" + "---:|" * len(cols))
    for name, by_impl in results.items():
        for impl, r in by_impl.items():
            vals = [r[f"decode_b{b}"] for b in batches] + [r["prefill"]]
            print(f"| {name} | {impl} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")
    print("\nother processes' share of the CPUs during each decode run (a shared machine's noise):")
    for name, by_impl in results.items():
        for impl, r in by_impl.items():
            shares = " / ".join(f"{100 * r.get(f'others_b{b}', 0.0):.0f} %" for b in batches)
            print(f"others | {name} | {impl} | {shares}")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    plot(results, batches, os.path.join(args.out, "bench_engine.png"))
    print(f"\nwrote {args.out}/results.json and bench_engine.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
