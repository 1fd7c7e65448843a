"""Does compiling new grammars stall other requests' tokens? Inter-token latency of running streams before and
while new JSON schemas compile.

    python benchmarks/structured_compile_stall.py --url http://127.0.0.1:8188/v1 [--streams 8] [--schemas 8]

--streams plain greedy streams (ignore_eos, 256 tokens) run; after --warm seconds, --schemas requests each
with a JSON schema never seen before (distinct property names, so no compile-cache hit) are sent at once.
--control sends the same requests without a schema (their prefill alone, the baseline). Prints the plain
streams' gaps (p50, p99, max) in the window before the schemas were sent and in the window from then until
every schema request has its first token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid

import httpx


async def stream(client: httpx.AsyncClient, url: str, body: dict, arrivals: list[float]) -> None:
    async with client.stream("POST", f"{url}/chat/completions", json={**body, "stream": True}) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: {") and json.loads(line[6:]).get("choices"):
                arrivals.append(time.perf_counter())


def _gaps(streams: list[list[float]], start: float, end: float) -> list[float]:
    return [b - a for s in streams for a, b in zip(s, s[1:], strict=False) if start <= b <= end]


def _row(name: str, gaps: list[float]) -> str:
    if not gaps:
        return f"| {name} | 0 | - | - | - |"
    q = sorted(gaps)
    p99 = q[min(len(q) - 1, int(0.99 * len(q)))]
    return f"| {name} | {len(q)} | {statistics.median(q) * 1e3:.1f} | {p99 * 1e3:.1f} | {q[-1] * 1e3:.1f} |"


async def main_async(args: argparse.Namespace) -> None:
    base = {"model": args.model, "temperature": 0.0, "ignore_eos": True}
    prompt = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
    async with httpx.AsyncClient(timeout=600) as client:
        plain: list[list[float]] = [[] for _ in range(args.streams)]
        tasks = [
            asyncio.create_task(stream(client, args.url, {**base, "messages": prompt, "max_tokens": 256}, a))
            for a in plain
        ]
        await asyncio.sleep(args.warm)
        sent = time.perf_counter()
        firsts: list[list[float]] = [[] for _ in range(args.schemas)]
        schema_tasks = []
        for i, a in enumerate(firsts):
            tag = uuid.uuid4().hex[:8]
            schema = {
                "type": "object",
                "properties": {f"name_{tag}": {"type": "string"}, f"count_{tag}_{i}": {"type": "integer"}},
                "required": [f"name_{tag}", f"count_{tag}_{i}"],
            }
            body = {**base, "messages": [{"role": "user", "content": "Give a name and a count."}],
                    "max_tokens": 32}
            if not args.control:
                fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
                body["response_format"] = fmt
            schema_tasks.append(asyncio.create_task(stream(client, args.url, body, a)))
        await asyncio.gather(*schema_tasks)
        compiled = max(a[0] for a in firsts if a)
        await asyncio.gather(*tasks)
    what = "plain requests (control)" if args.control else "new schemas"
    print(f"{args.streams} plain streams; {args.schemas} {what} sent at +{args.warm:.0f} s, all had a "
          f"first token {1e3 * (compiled - sent):.0f} ms later")
    print("| window | gaps | ITL p50 (ms) | ITL p99 (ms) | max (ms) |\n|---|---:|---:|---:|---:|")
    print(_row("before the schemas", _gaps(plain, sent - args.warm / 2, sent)))
    print(_row("while they compile and start", _gaps(plain, sent, compiled)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", default="default")
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--schemas", type=int, default=8)
    ap.add_argument("--warm", type=float, default=4.0)
    ap.add_argument("--control", action="store_true", help="the same requests without a schema")
    asyncio.run(main_async(ap.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
