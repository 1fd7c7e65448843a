"""How long a dead engine keeps the stack down: start the stack, stream a long answer, SIGKILL a process
mid-stream (the llm_engine stub, what the OOM killer would pick, or tritonserver), and time what follows.
`--victim wedge` SIGSTOPs the stub instead: alive but never finishing a step, found by the launcher's
watchdog after --engine-step-timeout (pass a short one: `-- --engine-step-timeout 5`).

    python benchmarks/recovery.py [--victim stub|tritonserver|rank|wedge] [--repeats 2] [-- launcher flags...]

Per repeat: seconds from the kill to the end of the live stream (an error chunk + [DONE]), to the first
non-200 /health, to /health 200 again, and whether the first request after that succeeded. The stack is the
default model unless launcher flags say otherwise; it is stopped at the end. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from paddlellm.ports import free_port  # noqa: E402


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def _find(root: int, victim: str) -> int:
    if victim == "rank":  # a tensor-parallel rank worker: a child of the llm_engine stub
        ranks = _descendants(_find(root, "stub"))
        if not ranks:
            raise RuntimeError("the llm_engine stub has no rank workers (--tensor-parallel-size > 1)")
        return ranks[-1]
    for pid in _descendants(root):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if victim == "tritonserver" and comm == "tritonserver" or victim == "stub" and b"/llm_engine/" in cmd:
            return pid
    raise RuntimeError(f"no {victim} process under the launcher")


def _wait_health(url: str, want_ok: bool, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            ok = httpx.get(url + "/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok == want_ok:
            return time.monotonic()
        time.sleep(0.1)
    raise RuntimeError(f"/health not {'200' if want_ok else 'non-200'} after {timeout:g}s")


def one(url: str, root: int, victim: str) -> dict[str, float | bool]:
    body = {"model": "default", "prompt": "Tell me a very long story.", "max_tokens": 1000, "stream": True,
            "ignore_eos": True}
    with httpx.Client(base_url=url, timeout=60) as c, c.stream("POST", "/v1/completions", json=body) as r:
        lines = (line for line in r.iter_lines() if line)
        next(lines)
        killed = time.monotonic()
        if victim == "wedge":
            os.kill(_find(root, "stub"), signal.SIGSTOP)
        else:
            os.kill(_find(root, victim), signal.SIGKILL)
        rest = list(lines)
        ended = time.monotonic()
    down = _wait_health(url, False, 30)
    up = _wait_health(url, True, 300)
    small = {"model": "default", "prompt": "Hi", "max_tokens": 4}
    r = httpx.post(url + "/v1/completions", json=small, timeout=60)
    return {
        "stream_end_s": ended - killed,
        "error_chunk_and_done": len(rest) >= 2 and rest[-1] == "data: [DONE]" and '"error"' in rest[-2],
        "unhealthy_after_s": down - killed,
        "healthy_after_s": up - killed,
        "next_request_ok": r.status_code == 200,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--victim", choices=("stub", "tritonserver", "rank", "wedge"), default="stub")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("launcher_args", nargs="*")
    args = ap.parse_args()
    port = free_port()
    argv = [sys.executable, "-m", "gateway.api_server", "--host", "127.0.0.1", "--port", str(port),
            "--max-engine-restarts", str(args.repeats + 1), *args.launcher_args]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        while proc.poll() is None:  # until the stack answers, or the launcher gives up (its log says why)
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        if proc.poll() is not None:
            raise SystemExit(f"the launcher exited with code {proc.returncode} before it was ready")
        rows = [one(url, proc.pid, args.victim) for _ in range(args.repeats)]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    print(f"| kill {args.victim} | stream ended (s) | error chunk + [DONE] | /health non-200 (s) | "
          "healthy (s) | next request ok |")
    print("|---|---:|---|---:|---:|---|")
    for i, r in enumerate(rows):
        print(f"| {i + 1} | {r['stream_end_s']:.2f} | {r['error_chunk_and_done']} | "
              f"{r['unhealthy_after_s']:.2f} | {r['healthy_after_s']:.1f} | {r['next_request_ok']} |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
