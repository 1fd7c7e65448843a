"""OpenAI-level load run against the full stack (gateway -> Triton ensemble -> engine), beside the engine's
offline decode throughput on the same model and workload.

    python benchmarks/bench_stack.py [--url http://HOST:PORT] [--model DIR] [--concurrency 1,8,32]
        [--rounds 2] [--repeats 2] [--max-tokens 64] [--threads 0] [--no-offline] [--profile] [--out DIR]
        [--launcher-arg=--stream-interval=4] [--stack-env NAME=VALUE]

Without --url it starts the stack itself (`python -m gateway.api_server` on a free loopback port with
--max-num-seqs = the largest concurrency, so that level decodes as one batch) and stops it afterwards.
Per concurrency level C, C clients each send --rounds greedy streaming chat requests back to back
(max_tokens tokens each, ignore_eos, so every request generates the same count) with httpx. Measured:
- TTFT: request sent -> first chunk carrying tokens;
- ITL: gaps between consecutive token-carrying chunks of one stream (one chunk per engine step, or per k
  steps with --stream-interval k: `tokens/chunk` says which);
- output tok/s: sum of completion_tokens (usage) / (first send -> last stream end), prefill included;
- batch decode tok/s: tokens arriving while the whole first round is decoding (from the last first token
  of round 1 to the first end of round 1) / that window - the stack-side twin of bench_engine's decode
  tok/s, which also excludes prefill.
The offline reference is `bench_engine.engine_bench` (the engine in-process, no Triton, no HTTP) with the
same prompt length (the chat template's, counted with the tokenizer), max_tokens and math threads, at
batch size C, run in a fresh process right after each stack level while the stack idles: on a shared,
noisy machine only such pairs compare. ratio = stack / offline of the same pair; --repeats pairs per
level, medians reported. Prints markdown tables, writes results.json and bench_stack.png to --out.
--profile (with a stack it started) also records, per level, each stack process's CPU ms per engine step and
Triton's per-model executions and queue/compute times (stack_profile.py): on the shared machine these move far
less than tok/s, so they show what a change to the serving path buys.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / ".models" / "SmolLM2-135M-Instruct"
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {
        "role": "user",
        "content": "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    },
]


@dataclass
class StreamRecord:
    """One streamed request: send time, each token-carrying chunk's arrival and token count, the end."""

    sent: float
    arrivals: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    ended: float = 0.0
    completion_tokens: int = 0
    prompt_tokens: int = 0
    round: int = 0


@dataclass(frozen=True)
class LevelStats:
    concurrency: int
    requests: int
    ttft_p50_ms: float
    ttft_p90_ms: float
    itl_p50_ms: float
    itl_p90_ms: float
    output_tok_s: float
    batch_decode_tok_s: float
    prompt_tokens: int
    load_avg: float
    tokens_per_chunk: float = 1.0
    offline_decode_tok_s: float = float("nan")
    repeat: int = 0


_NUMERIC = ("ttft_p50_ms", "ttft_p90_ms", "itl_p50_ms", "itl_p90_ms", "output_tok_s", "batch_decode_tok_s",
            "load_avg", "offline_decode_tok_s", "tokens_per_chunk")


def _pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list (p in [0, 1])."""
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


def summarize(concurrency: int, recs: list[StreamRecord], load_avg: float) -> LevelStats:
    """Per-level numbers from the stream records (see the module docstring for the definitions)."""
    ttft = sorted((r.arrivals[0] - r.sent) * 1e3 for r in recs if r.arrivals)
    itl = sorted((b - a) * 1e3 for r in recs for a, b in zip(r.arrivals, r.arrivals[1:], strict=False))
    wall = max(r.ended for r in recs) - min(r.sent for r in recs)
    first_round = [r for r in recs if r.round == 0 and r.arrivals]
    lo = max(r.arrivals[0] for r in first_round)
    hi = min(r.arrivals[-1] for r in first_round)
    # Tokens that arrived strictly inside the window: each batch step delivers one token per stream.
    in_window = sum(n for r in recs for t, n in zip(r.arrivals, r.tokens, strict=True) if lo < t <= hi)
    return LevelStats(
        concurrency=concurrency,
        requests=len(recs),
        ttft_p50_ms=statistics.median(ttft) if ttft else float("nan"),
        ttft_p90_ms=_pct(ttft, 0.9),
        itl_p50_ms=statistics.median(itl) if itl else float("nan"),
        itl_p90_ms=_pct(itl, 0.9),
        output_tok_s=sum(r.completion_tokens for r in recs) / wall if wall > 0 else float("nan"),
        batch_decode_tok_s=in_window / (hi - lo) if hi > lo else float("nan"),
        prompt_tokens=int(statistics.median(r.prompt_tokens for r in recs)),
        load_avg=load_avg,
        tokens_per_chunk=sum(n for r in recs for n in r.tokens) / max(1, sum(len(r.tokens) for r in recs)),
    )


# ---------------------------------------------------------------------------------------------- load
async def _one_stream(client, url: str, body: dict, rnd: int) -> StreamRecord:  # noqa: ANN001
    rec = StreamRecord(sent=time.perf_counter(), round=rnd)
    async with client.stream("POST", url, json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread()).decode(errors='replace')}")
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            now = time.perf_counter()
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(f"stream error: {chunk['error']}")
            for choice in chunk.get("choices") or []:
                ids = (choice.get("delta") or {}).get("token_ids") or []
                if ids:
                    rec.arrivals.append(now)
                    rec.tokens.append(len(ids))
            if chunk.get("usage"):
                rec.completion_tokens = chunk["usage"]["completion_tokens"]
                rec.prompt_tokens = chunk["usage"]["prompt_tokens"]
    rec.ended = time.perf_counter()
    return rec


async def run_level(base_url: str, concurrency: int, rounds: int, max_tokens: int) -> list[StreamRecord]:
    """`concurrency` clients, each sending `rounds` streaming requests one after another."""
    import httpx

    url = f"{base_url}/chat/completions"
    body = {
        "model": "default",
        "messages": MESSAGES,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:

        async def worker() -> list[StreamRecord]:
            return [await _one_stream(client, url, body, rnd) for rnd in range(rounds)]

        per_worker = await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [r for recs in per_worker for r in recs]


# ------------------------------------------------------------------------------------------ launcher
class Stack:
    """`python -m gateway.api_server` in its own session; stop() sends SIGTERM (the launcher stops
    tritonserver and the gateway itself) and kills the group if it lingers."""

    def __init__(self, model: Path, max_num_seqs: int, extra: list[str], log: Path,
                 env_extra: dict[str, str] | None = None) -> None:
        from paddlellm.ports import free_port  # the repo root is on sys.path (main)

        self.port = free_port()
        self.run_dir = Path(tempfile.mkdtemp(prefix="paddlellm-bench-"))
        argv = [sys.executable, "-m", "gateway.api_server", "--host", "127.0.0.1", "--port", str(self.port),
                "--run-dir", str(self.run_dir), "--model", str(model), "--max-num-seqs", str(max_num_seqs),
                *extra]
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, PYTHONPATH=path, **(env_extra or {}))
        self.log = log
        self._log_file = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def wait_ready(self, timeout_s: float = 900.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"launcher exited with {self.proc.returncode}; see {self.log}")
            if "ready: OpenAI API" in self.log.read_text(errors="replace"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"stack not ready after {timeout_s:g}s; see {self.log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log_file.close()
        if self.proc.returncode == 0:  # otherwise keep tritonserver.log and gateway.log for a look
            shutil.rmtree(self.run_dir, ignore_errors=True)


class Profiler:
    """--profile: snapshots of the stack's per-process CPU and Triton's model statistics around a level."""

    def __init__(self, stack: Stack) -> None:
        sys.path.insert(0, str(REPO / "benchmarks"))
        import stack_profile

        self.sp = stack_profile
        self.root = stack.proc.pid
        self.http = json.loads((stack.run_dir / "endpoints.json").read_text())["triton_http"]

    def snapshot(self):  # noqa: ANN201 - a stack_profile.Snapshot
        return self.sp.snapshot(self.root, self.http)

    def level(self, before, concurrency: int, repeat: int, recs: list[StreamRecord]) -> dict:  # noqa: ANN001
        tokens = sum(r.completion_tokens for r in recs)
        rep = self.sp.report(before, self.snapshot(), tokens, tokens // concurrency)
        print(f"profile, concurrency {concurrency}:\n{self.sp.format_report(rep)}", flush=True)
        return {"concurrency": concurrency, "repeat": repeat, **rep}


# ------------------------------------------------------------------------------------------- offline
def offline_decode(model: Path, batches: list[int], prompt_len: int, new_tokens: int, threads: int) -> dict:
    """bench_engine's in-process engine run, in a fresh process (paddle stays out of this one)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_engine

    return bench_engine.isolated(bench_engine.engine_bench, str(model), batches, prompt_len, new_tokens, 64,
                                 threads)


def chat_prompt_len(model: Path) -> int:
    """Token count of MESSAGES through the checkpoint's chat template, as the tokenizer model computes it."""
    sys.path.insert(0, str(REPO))
    from paddlellm.model_info import resolve_checkpoint
    from paddlellm.text.tokenizer import TextTokenizer

    return len(TextTokenizer.from_dir(resolve_checkpoint(str(model))).encode_chat(MESSAGES))


# -------------------------------------------------------------------------------------------- report
def table(stats: list[LevelStats]) -> str:
    head = ["concurrency", "repeat", "requests", "TTFT p50 (ms)", "TTFT p90 (ms)", "ITL p50 (ms)",
            "ITL p90 (ms)", "tokens/chunk", "output tok/s", "batch decode tok/s", "offline decode tok/s",
            "ratio output", "ratio decode", "load avg"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for s in stats:
        off = s.offline_decode_tok_s
        lines.append(
            f"| {s.concurrency} | {s.repeat} | {s.requests} | {s.ttft_p50_ms:.0f} | {s.ttft_p90_ms:.0f} "
            f"| {s.itl_p50_ms:.1f} | {s.itl_p90_ms:.1f} | {s.tokens_per_chunk:.2f} "
            f"| {s.output_tok_s:.1f} | {s.batch_decode_tok_s:.1f} | {off:.1f} "
            f"| {s.output_tok_s / off:.0%} | {s.batch_decode_tok_s / off:.0%} | {s.load_avg:.1f} |"
        )
    return "\n".join(lines)


def medians(stats: list[LevelStats]) -> list[LevelStats]:
    """Per concurrency level, the median of every number over the repeats (repeat = -1)."""
    out = []
    for c in dict.fromkeys(s.concurrency for s in stats):
        runs = [s for s in stats if s.concurrency == c]
        nums = {f: statistics.median(getattr(s, f) for s in runs) for f in _NUMERIC}
        out.append(dataclasses.replace(runs[0], repeat=-1, **nums))
    return out


def plot(stats: list[LevelStats], file: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = [s.concurrency for s in stats]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(cs, [s.ttft_p50_ms for s in stats], "o-", label="p50")
    axes[0].plot(cs, [s.ttft_p90_ms for s in stats], "s--", label="p90")
    axes[0].set_title("TTFT (ms)")
    axes[1].plot(cs, [s.itl_p50_ms for s in stats], "o-", label="p50")
    axes[1].plot(cs, [s.itl_p90_ms for s in stats], "s--", label="p90")
    axes[1].set_title("inter-token latency (ms)")
    axes[2].plot(cs, [s.output_tok_s for s in stats], "o-", label="stack: output tok/s")
    axes[2].plot(cs, [s.batch_decode_tok_s for s in stats], "^-", label="stack: batch decode tok/s")
    axes[2].plot(cs, [s.offline_decode_tok_s for s in stats], "s--", label="engine offline decode tok/s")
    axes[2].set_title("throughput (tokens/s), medians over repeats")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(cs, [str(c) for c in cs])
        ax.set_xlabel("concurrency")
        ax.legend()
    fig.tight_layout()
    fig.savefig(file, dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="gateway base URL (http://host:port); default: start the stack here")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="checkpoint (launcher and offline run)")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--rounds", type=int, default=2, help="requests per client per level")
    ap.add_argument("--repeats", type=int, default=2, help="(stack, offline) pairs per level")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0,
                    help="engine math threads, stack (--num-threads) and offline alike; 0 = all cores")
    ap.add_argument("--no-offline", action="store_true", help="skip the engine's offline reference")
    ap.add_argument("--launcher-arg", action="append", default=[], help="extra launcher flag (repeatable)")
    ap.add_argument("--stack-env", action="append", default=[], metavar="NAME=VALUE",
                    help="environment variable for the stack only, not the offline run (repeatable)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "stack")
    ap.add_argument("--profile", action="store_true",
                    help="per level: CPU per stack process and Triton's model statistics (stack_profile.py)")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)

    threads = args.threads or (os.cpu_count() or 1)
    prompt_len = chat_prompt_len(args.model)
    if args.threads:
        args.launcher_arg.append(f"--num-threads={args.threads}")
    stack = None
    if args.url:
        base_url = args.url.rstrip("/").removesuffix("/v1") + "/v1"
    else:
        stack_env = dict(kv.split("=", 1) for kv in args.stack_env)
        stack = Stack(args.model, max(levels), args.launcher_arg, args.out / "launcher.log", stack_env)
        base_url = stack.base_url
    stats: list[LevelStats] = []
    profiles: list[dict] = []
    profiler = None
    try:
        if stack is not None:
            print(f"starting the stack (log {stack.log})", flush=True)
            stack.wait_ready()
            if args.profile:
                profiler = Profiler(stack)
        asyncio.run(run_level(base_url, 1, 1, 8))  # warm-up: first-request paths, connection set-up
        for rep in range(args.repeats):
            for c in levels:
                load = os.getloadavg()[0]
                before = profiler.snapshot() if profiler else None
                t0 = time.perf_counter()
                recs = asyncio.run(run_level(base_url, c, args.rounds, args.max_tokens))
                s = summarize(c, recs, load)
                msg = f"concurrency {c}: {len(recs)} requests in {time.perf_counter() - t0:.1f}s"
                if profiler and before:
                    profiles.append(profiler.level(before, c, rep, recs))
                if not args.no_offline:
                    # Right after, while the stack idles: paired, so both see about the same machine load.
                    res = offline_decode(args.model, [c], prompt_len, args.max_tokens, threads)
                    off = res[f"decode_b{c}"]
                    s = dataclasses.replace(s, offline_decode_tok_s=off)
                    msg += f", offline decode {off:.1f} tok/s"
                stats.append(dataclasses.replace(s, repeat=rep))
                print(f"{msg}, load avg {load:.2f} -> {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        if stack is not None:
            stack.stop()
    if stats[0].prompt_tokens != prompt_len:
        print(f"warning: the stack saw {stats[0].prompt_tokens} prompt tokens, offline used {prompt_len}")
    summary = medians(stats)
    print(f"\n{args.model.name}, chat prompt {stats[0].prompt_tokens} tokens, {args.max_tokens} new tokens, "
          f"greedy, ignore_eos, {args.rounds} requests per client, {threads} engine threads\n")
    print(table(sorted(stats, key=lambda s: (s.concurrency, s.repeat))))
    print("\nmedians over repeats:\n")
    print(table(summary))
    (args.out / "results.json").write_text(
        json.dumps({"runs": [asdict(s) for s in stats], "medians": [asdict(s) for s in summary],
                    "threads": threads, "prompt_len": prompt_len, "max_tokens": args.max_tokens,
                    "profiles": profiles}, indent=1),
        encoding="utf-8",
    )
    plot(summary, args.out / "bench_stack.png")
    print(f"\nwrote {args.out}/results.json and bench_stack.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
