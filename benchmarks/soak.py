"""Soak: many concurrent streams for a long time, some clients walking away; does anything leak?

    python benchmarks/soak.py [--minutes 10] [--concurrency 64] [--disconnect 0.2] [--json out.json]
                              [-- launcher flags...]

Starts the stack (the default model unless launcher flags say otherwise) and runs `--concurrency` client
loops for `--minutes`. Each request is a distinct prompt of a mixed length (a few words to ~1,000 tokens),
chat or completion, streamed or not, with a mixed max_tokens (4 to 512); a `--disconnect` share of the
streamed ones closes its connection at a random chunk (which must abort the engine request). Then it waits
for the engine to drain and reports:

- requests completed, disconnected on purpose, failed (any non-200 or a stream without [DONE]);
- the engine's free KV blocks before the load and after the drain (with prefix caching, cached blocks count
  as free);
- RSS and open file descriptors of every process of the stack (launcher, gateway workers, tritonserver, the
  python backend stubs and rank workers) after a warm-up minute of load and at the end: flat within 5 %;
- after a SIGTERM to the launcher: processes of the stack still alive and python-backend shared-memory
  regions left in /dev/shm (both must be none).
Prints a Markdown table; `--json` also writes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from paddlellm.ports import free_port  # noqa: E402

WORDS = (
    "river mountain lantern copper harbor meadow signal orchard ledger violet canyon thunder marble "
    "pepper saddle glacier whisper compass ember falcon timber quartz"
).split()
TOPICS = ("a lighthouse keeper", "the history of tea", "how rivers form", "a chess opening",
          "why the sky is blue", "a recipe for bread", "the rules of cricket", "a trip to Mars")


@dataclass
class Tally:
    completed: int = 0
    disconnected: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    output_chunks: int = 0


def _tree(root: int) -> list[int]:
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return out


def _name(pid: int) -> str:
    """A stable label for a process of the stack: what it is, not its pid."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    if m := re.search(r"model_repository/(\w+)/1/model\.py", cmd):
        return f"stub:{m.group(1)}"
    if "spawn_main" in cmd or "resource_tracker" in cmd:
        return "rank-worker" if "spawn_main" in cmd else "resource-tracker"
    if "gateway.api_server" in cmd:
        return "launcher"
    if "uvicorn" in cmd:
        return "gateway"
    return comm


def snapshot(root: int) -> dict[str, dict[str, int]]:
    """RSS (KiB) and open fds of every process under `root`, keyed by label (#n when a label repeats)."""
    out: dict[str, dict[str, int]] = {}
    for pid in _tree(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
            fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
        except (OSError, AttributeError):
            continue
        label, n = _name(pid), 1
        while (label if n == 1 else f"{label}#{n}") in out:
            n += 1
        out[label if n == 1 else f"{label}#{n}"] = {"pid": pid, "rss_kib": rss, "fds": fds}
    return out


class _Sampler(threading.Thread):
    """RSS and fds of the stack every `period` seconds while the load runs: a leak grows steadily, warm-up
    growth levels off."""

    def __init__(self, root: int, period: float, t0: float, into: list) -> None:
        super().__init__(daemon=True)
        self.root, self.period, self.t0, self.into = root, period, t0, into
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.period):
            self.into.append((time.monotonic() - self.t0, snapshot(self.root)))

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def _metric(page: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^paddlellm:{name}(?:{{[^}}]*}})? (\S+)$", page, re.MULTILINE))


def _prompt(rng: random.Random, i: int) -> str:
    """Distinct (the request number leads) and of a mixed length: 1 to ~1,000 tokens of filler."""
    n = rng.choice((0, 4, 16, 64, 256, 700))
    filler = " ".join(rng.choice(WORDS) for _ in range(n))
    return f"Request {i}. {filler} Now tell me about {rng.choice(TOPICS)}."


async def client(c: httpx.AsyncClient, rng: random.Random, deadline: float, counter: list[int], args, tally):
    while time.monotonic() < deadline:
        counter[0] += 1
        i = counter[0]
        max_tokens = rng.choice((4, 16, 64, 128, 256, 512))
        stream = rng.random() < 0.8
        walk_away = stream and rng.random() < args.disconnect
        leave_at = rng.randint(1, max(1, max_tokens // 2)) if walk_away else None
        if rng.random() < 0.5:
            path = "/v1/chat/completions"
            body = {"messages": [{"role": "user", "content": _prompt(rng, i)}]}
        else:
            path, body = "/v1/completions", {"prompt": _prompt(rng, i)}
        body |= {"model": "default", "max_tokens": max_tokens, "stream": stream, "temperature": 0.8,
                 "seed": i}
        try:
            if not stream:
                r = await c.post(path, json=body)
                if r.status_code == 200:
                    tally.completed += 1
                else:
                    tally.failed += 1
                    tally.failures.append(f"{r.status_code} {r.text[:200]}")
                continue
            async with c.stream("POST", path, json=body) as r:
                if r.status_code != 200:
                    tally.failed += 1
                    tally.failures.append(f"{r.status_code} {(await r.aread())[:200]!r}")
                    continue
                chunks, done = 0, False
                async for line in r.aiter_lines():
                    if not line:
                        continue
                    if line == "data: [DONE]":
                        done = True
                        break
                    if '"error"' in line:
                        tally.failures.append(line[:200])
                        break
                    chunks += 1
                    tally.output_chunks += 1
                    if leave_at is not None and chunks >= leave_at:
                        break  # leaving the block closes the connection mid-stream
                if leave_at is not None and not done:
                    tally.disconnected += 1
                elif done:
                    tally.completed += 1
                else:
                    tally.failed += 1
        except httpx.HTTPError as e:
            tally.failed += 1
            tally.failures.append(f"{type(e).__name__}: {e}")


async def load(url: str, args, seconds: float, tally: Tally, counter: list[int]) -> None:
    limits = httpx.Limits(max_connections=args.concurrency + 8, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as c:
        deadline = time.monotonic() + seconds
        rngs = [random.Random(args.seed * 1000 + k + counter[0]) for k in range(args.concurrency)]
        await asyncio.gather(*(client(c, rng, deadline, counter, args, tally) for rng in rngs))


def _scrape(url: str) -> str:
    return httpx.get(url + "/metrics", timeout=30).text


def _drain(url: str, timeout: float = 300) -> str:
    """Until the engine has no request running or waiting (aborts of disconnected clients land too)."""
    deadline = time.monotonic() + timeout
    while True:
        page = _scrape(url)
        busy = _metric(page, "num_requests_running") + _metric(page, "num_requests_waiting")
        if busy == 0 or time.monotonic() > deadline:
            return page
        time.sleep(1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--warmup-minutes", type=float, default=1.0, help="load before the first RSS snapshot")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--disconnect", type=float, default=0.2, help="share of streamed requests that walk away")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("launcher_args", nargs="*")
    args = ap.parse_args()
    port = free_port()
    argv = [sys.executable, "-m", "gateway.api_server", "--host", "127.0.0.1", "--port", str(port),
            *args.launcher_args]
    log_path = Path(tempfile.mkstemp(prefix="soak-launcher-", suffix=".log")[1])
    log = log_path.open("w")  # noqa: SIM115 - lives as long as the launcher
    proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    tally, counter, shm, family = Tally(), [0], set(), set()
    try:
        while proc.poll() is None:
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        if proc.poll() is not None:
            raise SystemExit(f"the launcher exited with code {proc.returncode}; see {log_path}")
        page = _scrape(url)
        blocks_total, free_start = _metric(page, "kv_cache_blocks"), _metric(page, "kv_cache_free_blocks")
        idle = snapshot(proc.pid)
        t0 = time.monotonic()
        asyncio.run(load(url, args, args.warmup_minutes * 60, tally, counter))
        warm = snapshot(proc.pid)
        series = [(time.monotonic() - t0, warm)]
        sampler = _Sampler(proc.pid, 60.0, t0, series)
        sampler.start()
        asyncio.run(load(url, args, (args.minutes - args.warmup_minutes) * 60, tally, counter))
        sampler.stop()
        load_s = time.monotonic() - t0
        page = _drain(url)
        free_end = _metric(page, "kv_cache_free_blocks")
        end = snapshot(proc.pid)
        series.append((time.monotonic() - t0, end))
        for pid in _tree(proc.pid):
            family.add(pid)
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            shm |= {a.decode() for a in cmd if a.startswith(b"triton_python_backend_shm_region")}
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
        log.close()
    time.sleep(2)
    left = sorted(p for p in family if Path(f"/proc/{p}").exists())
    shm_left = sorted(n for n in shm if Path("/dev/shm", n).exists())

    print(f"soak: {args.minutes:g} min, {args.concurrency} clients, {args.disconnect:.0%} of streams walk "
          f"away; {load_s:.0f} s of load")
    print("\n| figure | value |\n|---|---|")
    print(f"| requests completed | {tally.completed} |")
    print(f"| disconnected on purpose | {tally.disconnected} |")
    print(f"| failed | {tally.failed} |")
    print(f"| streamed chunks received | {tally.output_chunks} |")
    print(f"| KV blocks free: start / end (of {blocks_total:g}) | {free_start:g} / {free_end:g} |")
    print(f"| launcher exit code after SIGTERM | {code} (log: {log_path}) |")
    print(f"| processes left behind | {len(left)} |")
    print(f"| /dev/shm regions left behind | {len(shm_left)} |")
    print("\n| process | RSS idle (MiB) | RSS after warm-up | RSS end | change | fds warm-up | fds end |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = []
    for label in sorted(end):
        w, e, i = warm.get(label), end[label], idle.get(label)
        if w is None:
            continue
        change = (e["rss_kib"] - w["rss_kib"]) / w["rss_kib"]
        rows.append({"process": label, "rss_idle_kib": i and i["rss_kib"], "rss_warm_kib": w["rss_kib"],
                     "rss_end_kib": e["rss_kib"], "rss_change": change, "fds_warm": w["fds"],
                     "fds_end": e["fds"]})
        idle_mib = f"{i['rss_kib'] / 1024:.0f}" if i else "-"
        print(f"| {label} | {idle_mib} | {w['rss_kib'] / 1024:.0f} | {e['rss_kib'] / 1024:.0f} | "
              f"{change:+.1%} | {w['fds']} | {e['fds']} |")
    print("\nRSS (MiB) over time, from the end of the warm-up:\n")
    labels = sorted(label for label in end if label in warm)
    print("| t (s) | " + " | ".join(labels) + " |\n|---:|" + "---:|" * len(labels))
    for t, snap in series:
        cells = [f"{snap[label]['rss_kib'] / 1024:.1f}" if label in snap else "-" for label in labels]
        print(f"| {t:.0f} | " + " | ".join(cells) + " |")
    for f in tally.failures[:10]:
        print(f"failure: {f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "minutes": args.minutes, "concurrency": args.concurrency, "disconnect": args.disconnect,
            "launcher_args": args.launcher_args, "tally": asdict(tally) | {"failures": tally.failures[:50]},
            "kv_blocks": {"total": blocks_total, "free_start": free_start, "free_end": free_end},
            "processes": rows, "exit_code": code,
            "rss_series": [
                {"t": t, "rss_kib": {k: v["rss_kib"] for k, v in snap.items()}} for t, snap in series
            ],
            "left_behind": left, "shm_left": shm_left,
        }, indent=1))
    ok = (tally.failed == 0 and free_end == free_start and not left and not shm_left and code == 0
          and all(abs(r["rss_change"]) <= 0.05 for r in rows))
    print("\nverdict:", "clean" if ok else "NOT clean")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
