"""OpenAI streaming load against any OpenAI-compatible server (ours, llama.cpp's llama-server, vLLM), with a
distinct prompt per request so no server answers from a prompt cache.

    python benchmarks/bench_serving.py --url http://127.0.0.1:8188/v1 [--label ours-wint4]
        [--concurrency 1,8,32] [--rounds 2] [--max-tokens 128] [--top-logprobs N] [--extra-body JSON]
        [--out results.json]

Per concurrency level C: C clients each send --rounds streaming chat requests back to back; every prompt is
a different ~50-token question (a counter and a topic in the text make each one unique), greedy
(temperature 0), `ignore_eos` so each request generates --max-tokens tokens. Measured per level: output
tok/s = generated tokens / (first send -> last stream end); TTFT = request sent -> first chunk with
content (p50, p90). Tokens are counted from the final usage when the server sends it, else one per content
chunk. --top-logprobs N asks every request for `logprobs` with N alternatives per token (the cost of
logprobs; the run fails if a content chunk comes back without its entries). Prints a Markdown table; --out
appends the level results (with --label) to a JSON list.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import time

import httpx

TOPICS = (
    "lighthouses", "volcanoes", "bread baking", "the Roman roads", "honey bees", "glaciers", "chess openings",
    "tea ceremonies", "railway signals", "coral reefs", "paper making", "the printing press", "bicycles",
    "desert plants", "jazz harmony", "satellite orbits", "river deltas", "wool dyeing", "ant colonies",
    "clock towers", "sea turtles", "mountain passes", "salt mining", "kite flying", "rice terraces",
)
EXTRA_BODY: dict[str, object] = {}  # --extra-body: fields merged into every request
AUDIENCES = ("a curious child", "a busy engineer", "a history student", "a retired sailor", "a new gardener")


def prompt(i: int) -> list[dict[str, str]]:
    topic = TOPICS[i % len(TOPICS)]
    audience = AUDIENCES[(i // len(TOPICS)) % len(AUDIENCES)]
    text = (
        f"Question {i}: explain how {topic} work and why they matter, for {audience}. Give two concrete "
        f"examples, one surprising fact, and end with a short practical tip about {topic}."
    )
    return [{"role": "user", "content": text}]


async def one(
    client: httpx.AsyncClient, url: str, model: str, i: int, max_tokens: int, top_logprobs: int | None
) -> dict[str, float]:
    body: dict[str, object] = {
        "model": model,
        "messages": prompt(i),
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    if top_logprobs is not None:
        body |= {"logprobs": True, "top_logprobs": top_logprobs}
    body |= EXTRA_BODY
    sent = time.perf_counter()
    first, chunks, usage = None, 0, None
    async with client.stream("POST", f"{url}/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"].get("completion_tokens")
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    chunks += 1
                    if top_logprobs is not None and not (choice.get("logprobs") or {}).get("content"):
                        raise RuntimeError(f"a content chunk without logprobs: {chunk}")
                    if first is None:
                        first = time.perf_counter()
    end = time.perf_counter()
    return {"sent": sent, "ttft": (first or end) - sent, "end": end, "tokens": float(usage or chunks)}


async def level(
    url: str,
    model: str,
    concurrency: int,
    rounds: int,
    max_tokens: int,
    counter,
    top_logprobs: int | None = None,
) -> dict:
    # No keep-alive: llama-server closes idle connections, and a reused stale one fails the next request.
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as c:

        async def client() -> list[dict[str, float]]:
            return [await one(c, url, model, next(counter), max_tokens, top_logprobs) for _ in range(rounds)]

        runs = [r for rs in await asyncio.gather(*(client() for _ in range(concurrency))) for r in rs]
    start, stop = min(r["sent"] for r in runs), max(r["end"] for r in runs)
    ttfts = sorted(r["ttft"] for r in runs)
    return {
        "concurrency": concurrency,
        "requests": len(runs),
        "tokens": sum(r["tokens"] for r in runs),
        "output_tok_s": sum(r["tokens"] for r in runs) / (stop - start),
        "ttft_p50_ms": statistics.median(ttfts) * 1e3,
        "ttft_p90_ms": ttfts[min(len(ttfts) - 1, int(0.9 * len(ttfts)))] * 1e3,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", required=True, help="OpenAI base URL, e.g. http://127.0.0.1:8188/v1")
    ap.add_argument("--model", default="default")
    ap.add_argument("--label", default="server")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=2, help="requests before measuring (not counted)")
    ap.add_argument("--prompt-offset", type=int, default=0, help="first prompt number (keep runs distinct)")
    ap.add_argument("--top-logprobs", type=int, default=None, help="ask each request for logprobs (0-20)")
    ap.add_argument("--extra-body", default="{}", help="JSON object merged into every request body")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    EXTRA_BODY.update(json.loads(args.extra_body))
    counter = itertools.count(args.prompt_offset)
    asyncio.run(level(args.url, args.model, 1, args.warmup, 8, counter))
    rows = []
    for c in (int(x) for x in args.concurrency.split(",")):
        r = asyncio.run(
            level(args.url, args.model, c, args.rounds, args.max_tokens, counter, args.top_logprobs)
        )
        rows.append({"label": args.label, "top_logprobs": args.top_logprobs, **r})
        tok_s, p50, p90 = r["output_tok_s"], r["ttft_p50_ms"], r["ttft_p90_ms"]
        print(f"| {args.label} | {c} | {tok_s:.1f} | {p50:.0f} | {p90:.0f} |", flush=True)
    if args.out:
        old = json.load(open(args.out, encoding="utf-8")) if os.path.exists(args.out) else []
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(old + rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
