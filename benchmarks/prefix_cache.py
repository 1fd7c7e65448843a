"""Prefix caching, measured: TTFT through the served stack with a cached ~1,000-token prefix against the cache
off, and engine throughput on a workload that shares no prefix (cache on against off).

    python benchmarks/prefix_cache.py [--model DIR] [--rounds 6] [--quantization none]
        [--skip-served] [--skip-offline] [--out benchmarks/results/prefix_cache]

Served: two stacks (`python -m gateway.api_server`, one with --enable-prefix-caching 1, one with 0) run side
by side on free loopback ports. Each round sends one streamed chat request to each, one after the other (the
machine is shared and noisy, so the two settings are interleaved rather than run in blocks): the same
~1,000-token system prompt and a new question per round, max_tokens 8. TTFT is the client's time from sending
the request to the first chunk with content. Round 0 is a warm-up for both (it is what fills the cache) and
is not counted.

Offline: one LLMEngine; rounds of a batch of requests with fresh random prompts (so nothing is shared, not
even with earlier rounds), the prefix cache switched on and off between rounds (on, off, off, on, ...; it
changes only the scheduler, so both settings share the weights, KV memory and threads: two engine instances
differ by up to ~13 % per step here with the same settings). Throughput = (prompt + generated tokens) / wall
time from submission to the last token; the figure to read is the median of the on/off ratios of adjacent
rounds, since whole rounds swing by tens of percent with other jobs' load. Scheduler: the only code that
differs is the scheduler's (hashing, lookups, registration; the model runs the same steps, a unit test checks
it), so it is also timed alone, over a do-nothing executor with the same workload: microseconds of
schedule() + update() per step, against the model's step time.

Prints markdown tables and writes results.json to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_stack import Stack  # noqa: E402 - the launcher wrapper every stack benchmark uses

SYSTEM = "You are a helpful assistant. " + " ".join(
    f"Rule {i}: answer briefly and politely about topic {i}." for i in range(70)
)


def _stack(model: Path, extra: list[str], log: Path) -> Stack:
    """bench_stack's launcher wrapper with the engine's own --max-num-seqs (8)."""
    return Stack(model, 8, extra, log)


def ttft(url: str, question: str) -> tuple[float, dict]:
    """Client TTFT of one streamed chat request, and its final usage."""
    body = {
        "model": "default",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    first, usage = None, {}
    t0 = time.perf_counter()
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - t0
            if chunk.get("usage"):
                usage = chunk["usage"]
    assert first is not None, "no content"
    return first, usage


def served(model: Path, rounds: int, extra: list[str]) -> dict:
    logs = Path(tempfile.mkdtemp(prefix="paddlellm-prefix-logs-"))
    print(f"launcher logs: {logs}", flush=True)
    stacks = {
        "on": _stack(model, ["--enable-prefix-caching", "1", *extra], logs / "stack_on.log"),
        "off": _stack(model, ["--enable-prefix-caching", "0", *extra], logs / "stack_off.log"),
    }
    try:
        for s in stacks.values():
            s.wait_ready()
        times: dict[str, list[float]] = {"on": [], "off": []}
        usage: dict[str, dict] = {}
        for rnd in range(rounds + 1):
            question = f"Question {rnd}: name {rnd % 5 + 2} animals that live in the sea."
            for name, s in stacks.items():
                t, usage[name] = ttft(s.base_url.removesuffix("/v1"), question)
                if rnd:
                    times[name].append(t)
                print(f"round {rnd} cache {name}: TTFT {t * 1000:.0f} ms, usage {usage[name]}", flush=True)
    finally:
        for s in stacks.values():
            s.stop()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "prompt_tokens": usage["on"]["prompt_tokens"],
        "cached_tokens": usage["on"]["prompt_tokens_details"]["cached_tokens"],
        "ttft_s": times,
        "median_ttft_s": med,
        "speedup": med["off"] / med["on"],
    }


def offline(
    model: Path, rounds: int, quantization: str, batch: int, prompt_len: int, new_tokens: int
) -> dict:
    """One engine, the cache switched on and off between rounds (on, off, off, on, ...): the setting changes
    only the scheduler, so both use the same weights, KV memory and threads. (Two engine instances in one
    process differ from each other by up to ~13 % per step here, with the same settings: more than the effect
    to measure.) Each round has fresh random prompts, so nothing is ever shared."""
    from paddlellm.config import EngineConfig
    from paddlellm.engine.core import LLMEngine
    from paddlellm.sampling import SamplingParams

    engine = LLMEngine.create(
        EngineConfig(model=str(model), quantization=quantization, max_num_seqs=batch, use_warmup=True)
    )
    cache = engine.scheduler.prefix_cache
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    run_tokens = batch * (prompt_len + new_tokens)
    rates: dict[str, list[float]] = {"on": [], "off": []}
    ratios: list[float] = []
    for rnd in range(2 * rounds + 2):
        name = "on" if rnd % 4 in (0, 3) else "off"
        cache.enabled = name == "on"
        prompts = np.random.default_rng(rnd).integers(3, engine.info.vocab_size, (batch, prompt_len)).tolist()
        t0 = time.perf_counter()
        for i, ids in enumerate(prompts):
            engine.add_request(f"r{rnd}-{i}", ids, params)
        engine.run_until_done()
        rate = run_tokens / (time.perf_counter() - t0)
        print(f"round {rnd} cache {name}: {rate:.0f} tok/s", flush=True)
        if rnd >= 2:  # the first pair warms up
            rates[name].append(rate)
            if rnd % 2:
                ratios.append(rates["on"][-1] / rates["off"][-1])
    hits = cache.hits
    engine.shutdown()
    return {
        "batch": batch,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "quantization": quantization,
        "tok_per_s": rates,
        "median_tok_per_s": {k: statistics.median(v) for k, v in rates.items()},
        "paired_on_off_ratios": ratios,
        "on_vs_off": statistics.median(ratios),
        "prefix_cache_hits": hits,
    }


class _NoModel:
    """An executor that computes nothing: a request whose chunk reaches the end of its known tokens gets 7."""

    def __init__(self) -> None:
        self.state: dict[str, list[int]] = {}  # request id -> [tokens computed, tokens known]

    def execute(self, sched):  # noqa: ANN001, ANN201 - SchedulerOutput -> ModelRunnerOutput
        from paddlellm.step_types import ModelRunnerOutput

        for new in sched.new_requests:
            known = len(new.prompt_token_ids) + len(new.output_token_ids)
            self.state[new.request_id] = [new.num_computed_tokens, known]
        for cached in sched.cached_requests:
            self.state[cached.request_id][1] += len(cached.new_token_ids)
        sampled = {}
        for rid, n in sched.num_scheduled_tokens.items():
            st = self.state[rid]
            st[0] += n
            if st[0] == st[1]:
                sampled[rid] = 7
        return ModelRunnerOutput(sampled)

    def check_health(self) -> None: ...

    def shutdown(self) -> None: ...


def scheduler_cost(model: Path, rounds: int, batch: int, prompt_len: int, new_tokens: int) -> dict:
    """Microseconds of schedule() + update() per step, cache on and off, over the do-nothing executor."""
    from paddlellm.config import EngineConfig
    from paddlellm.engine.core import LLMEngine
    from paddlellm.model_info import ModelInfo
    from paddlellm.sampling import SamplingParams

    info = ModelInfo.from_dir(str(model))
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    out: dict[str, float] = {}
    for name, on in (("on", True), ("off", False)):
        engine = LLMEngine(
            EngineConfig(model=str(model), enable_prefix_caching=on, max_num_seqs=batch), _NoModel(), info,
            num_blocks=1024,
        )
        best = float("inf")
        for rnd in range(max(rounds, 5)):
            prompts = np.random.default_rng(1000 + rnd).integers(3, info.vocab_size, (batch, prompt_len))
            for i, ids in enumerate(prompts.tolist()):
                engine.add_request(f"r{rnd}-{i}", ids, params)
            t0, steps = time.perf_counter(), 0
            while engine.has_unfinished():
                engine.step()
                steps += 1
            best = min(best, (time.perf_counter() - t0) / steps * 1e6)
        out[name] = best
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / ".models" / "SmolLM2-135M-Instruct")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--quantization", default="none", help="of the offline engines (stacks: the launcher's)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--skip-served", action="store_true")
    ap.add_argument("--skip-offline", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "prefix_cache")
    ap.add_argument("launcher_args", nargs="*", help="extra flags for both stacks (after --)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"cpu": _cpu(), "rounds": args.rounds}
    if not args.skip_served:
        s = results["served"] = served(args.model, args.rounds, args.launcher_args)
        print(f"\nServed TTFT, {s['prompt_tokens']}-token chat prompt ({s['cached_tokens']} cached), "
              f"median of {args.rounds} interleaved rounds:\n")
        print("| prefix cache | TTFT median (ms) | TTFT min-max (ms) |\n|---|---:|---:|")
        for k in ("off", "on"):
            v = s["ttft_s"][k]
            print(f"| {k} | {s['median_ttft_s'][k] * 1000:.0f} | {min(v) * 1000:.0f}-{max(v) * 1000:.0f} |")
        print(f"\nTTFT off / on: {s['speedup']:.1f}x")
    if not args.skip_offline:
        o = results["offline"] = offline(
            args.model, args.rounds, args.quantization, args.batch, args.prompt_len, args.new_tokens
        )
        print(f"\nOffline, no shared prefix: {o['batch']} requests x ({o['prompt_len']} prompt + "
              f"{o['new_tokens']} generated tokens), quantization {o['quantization']}, {args.rounds} "
              "rounds of each:\n")
        print("| prefix cache | tok/s median | tok/s min-max |\n|---|---:|---:|")
        for k in ("off", "on"):
            v = o["tok_per_s"][k]
            print(f"| {k} | {o['median_tok_per_s'][k]:.0f} | {min(v):.0f}-{max(v):.0f} |")
        print(f"\nthroughput on / off: median of {len(o['paired_on_off_ratios'])} adjacent pairs "
              f"{o['on_vs_off']:.3f} (prefix-cache hits: {o['prefix_cache_hits']})")
        sc = results["scheduler_us_per_step"] = scheduler_cost(
            args.model, args.rounds, args.batch, args.prompt_len, args.new_tokens
        )
        step_ms = 1000 / statistics.median(o["tok_per_s"]["off"]) * args.batch * (
            args.prompt_len + args.new_tokens
        ) / (args.new_tokens + 1)
        print(f"\nScheduler alone (schedule + update per step, best of rounds): cache on {sc['on']:.0f} us, "
              f"off {sc['off']:.0f} us; the model's median step here: {step_ms:.1f} ms "
              f"(difference: {100 * (sc['on'] - sc['off']) / 1000 / step_ms:.2f} % of a step)")
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


def _cpu() -> str:
    from paddlellm.cpu import read_cpu

    c = read_cpu()
    return f"{getattr(c, 'model_name', '') or c.vendor}, {os.cpu_count()} cores"


if __name__ == "__main__":
    raise SystemExit(main())
