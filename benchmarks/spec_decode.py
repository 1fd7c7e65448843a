"""Speculative decoding (n-gram drafts): output tok/s with and without it, on the default model, offline.

    python benchmarks/spec_decode.py [--model DIR] [--quantization wint4,none] [--repeats 3]
        [--spec '{"method": "ngram", ...}'] [--story-concurrency 1,8,32] [--max-tokens 192] [--threads 2]

Workloads (greedy, the default model's chat template):
- rewrite: 6 prompts that ask the model to repeat a given text or code with a small change (rename, fix a
  typo, change a number); run one at a time (concurrency 1);
- story: distinct prompts asking for a short story (nothing to copy), at each --story-concurrency c: c
  requests submitted together.
tok/s = output tokens / wall time from submission to the last token (prefill included, as a client sees it);
"speedup (CPU time)" is the same ratio over this process's CPU seconds, which other jobs on a shared machine
disturb less than wall time.
One engine with speculation and one without are built once per quantization (warmed up, and each workload's
first batch run once untimed); each batch runs off and on back to back, in alternating order, --repeats
times, so background load on a shared machine hits both alike; the median over repeats is reported.
Acceptance per draft position j (of the drafts that had a token at j, the share whose token j was accepted)
comes from the engine's counters over the speculative runs. Prints a markdown table; --out writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

DEFAULT_SPEC = (
    '{"method": "ngram", "num_speculative_tokens": 8, "prompt_lookup_min": 1, "prompt_lookup_max": 4}'
)

CODE = (
    "def mean(values):\n    total = 0\n    count = 0\n    for v in values:\n        total += v\n"
    "        count += 1\n    if count == 0:\n        return 0\n    return total / count\n\n\n"
    "def variance(values):\n    m = mean(values)\n    total = 0\n    for v in values:\n"
    "        total += (v - m) ** 2\n    return total / len(values)\n"
)
TEXT = (
    "Our team meeting is moved from Tuesday to Thursday at 10 am. Please bring your weekly report and the "
    "budget numbers for the third quarter. The meeting will take place in room 204 on the second floor. "
    "If you cannot attend, send your report to Anna before Wednesday evening."
)
JS = (
    "function greet(name) {\n  const message = 'Hello, ' + name + '!';\n  console.log(message);\n"
    "  return message;\n}\n\nfunction farewell(name) {\n  const message = 'Goodbye, ' + name + '!';\n"
    "  console.log(message);\n  return message;\n}\n"
)
REWRITE_PROMPTS = (
    f"Rewrite this Python code, renaming the function mean to average everywhere:\n\n{CODE}",
    f"Add a docstring to each function of this code and return the whole code:\n\n{CODE}",
    f"Rewrite this message, changing Thursday to Friday; keep everything else the same:\n\n{TEXT}",
    f"Fix the spelling and repeat the text exactly otherwise:\n\n{TEXT.replace('budget', 'budgett')}",
    f"Rewrite this JavaScript code using let instead of const:\n\n{JS}",
    f"Repeat this code, changing the greeting 'Hello' to 'Hi':\n\n{JS}",
)
STORY_TOPICS = (
    "a lighthouse keeper",
    "a lost robot",
    "a dragon who bakes bread",
    "two rival chess players",
    "a city under the sea",
    "a time-travelling cat",
    "the last tree on Mars",
    "a shy volcano",
    "a detective who is a dog",
    "a library that moves",
    "an astronaut's first day",
    "a singing river",
    "a clockmaker's apprentice",
    "a haunted bicycle",
    "a penguin in the desert",
    "a kingdom of ants",
)


def story_prompts(n: int) -> list[str]:
    return [
        f"Write a short story about {STORY_TOPICS[i % len(STORY_TOPICS)]} (variant {i // 16 + 1})."
        for i in range(n)
    ]


def run_batch(engine, prompts: list[list[int]], max_tokens: int, tag: str) -> tuple[int, float, float, int]:
    """(output tokens, wall seconds, this process's CPU seconds, engine steps)."""
    from paddlellm.sampling import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    start, cpu = time.perf_counter(), time.process_time()
    for i, ids in enumerate(prompts):
        engine.add_request(f"{tag}-{i}", ids, params)
    produced = steps = 0
    while engine.has_unfinished():
        produced += sum(len(o.new_token_ids) for o in engine.step())
        steps += 1
    return produced, time.perf_counter() - start, time.process_time() - cpu, steps


def _grown(before, after, field: str) -> list[int]:
    """How much each per-position counter grew between two EngineStats."""
    a, b = getattr(after, field), getattr(before, field) or (0,) * len(getattr(after, field))
    return [x - y for x, y in zip(a, b, strict=True)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(REPO, ".models", "SmolLM2-135M-Instruct"))
    ap.add_argument("--quantization", default="wint4,none")
    ap.add_argument("--spec", default=DEFAULT_SPEC)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--story-concurrency", default="1,8,32")
    ap.add_argument("--max-tokens", type=int, default=192)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from paddlellm.config import EngineConfig
    from paddlellm.engine.core import LLMEngine
    from paddlellm.text.tokenizer import TextTokenizer

    tok = TextTokenizer.from_dir(args.model)

    def chat(text: str) -> list[int]:
        return tok.encode_chat([{"role": "user", "content": text}])

    rewrite = [chat(p) for p in REWRITE_PROMPTS]
    concurrency = [int(c) for c in args.story_concurrency.split(",") if c]
    results = []
    for quant in args.quantization.split(","):
        base = dict(
            model=args.model,
            quantization=quant,
            num_threads=args.threads,
            max_num_seqs=32,
            max_model_len=2048,
            enable_prefix_caching=False,
            use_warmup=True,
        )
        engines = {
            "off": LLMEngine.create(EngineConfig(**base)),
            "on": LLMEngine.create(EngineConfig(**base, speculative_config=args.spec)),
        }
        workloads: list[tuple[str, int, list[list[list[int]]]]] = [("rewrite", 1, [[p] for p in rewrite])]
        for c in concurrency:
            prompts = [chat(p) for p in story_prompts(max(c, 6 if c == 1 else c))]
            groups = [prompts[i : i + c] for i in range(0, len(prompts), c)]
            workloads.append(("story", c, groups))
        for name, c, groups in workloads:
            speed: dict[str, list[float]] = {"off": [], "on": []}
            cpu_speed: dict[str, list[float]] = {"off": [], "on": []}
            steps = {"off": 0, "on": 0}  # engine steps over all repeats (deterministic: greedy)
            for mode in ("off", "on"):  # untimed: first-call costs of this batch shape
                run_batch(engines[mode], groups[0], 24, f"warm-{name}{c}-{mode}")
            before = engines["on"].stats()
            # Off and on run each batch back to back (order alternating), so load from other jobs on a shared
            # machine hits both alike; a mode's speed over a repeat is all its tokens / all its time.
            for rep in range(args.repeats):
                totals = {"off": [0, 0.0, 0.0], "on": [0, 0.0, 0.0]}
                for g, group in enumerate(groups):
                    for mode in ("off", "on") if (rep + g) % 2 == 0 else ("on", "off"):
                        n, dt, cpu, k = run_batch(
                            engines[mode], group, args.max_tokens, f"{name}{c}-{rep}-{g}"
                        )
                        totals[mode][0] += n
                        totals[mode][1] += dt
                        totals[mode][2] += cpu
                        steps[mode] += k
                for mode in ("off", "on"):
                    speed[mode].append(totals[mode][0] / totals[mode][1])
                    cpu_speed[mode].append(totals[mode][0] / totals[mode][2])
            after = engines["on"].stats()

            accepted_pos, drafted_pos = (
                _grown(before, after, "spec_accepted_per_position"),
                _grown(before, after, "spec_drafted_per_position"),
            )
            row = {
                "quantization": quant,
                "workload": name,
                "concurrency": c,
                "off_tok_s": statistics.median(speed["off"]),
                "on_tok_s": statistics.median(speed["on"]),
                "off_runs": speed["off"],
                "on_runs": speed["on"],
                "off_tok_cpu_s": statistics.median(cpu_speed["off"]),
                "on_tok_cpu_s": statistics.median(cpu_speed["on"]),
                "drafts": after.spec_num_drafts - before.spec_num_drafts,
                "draft_tokens": after.spec_num_draft_tokens - before.spec_num_draft_tokens,
                "accepted_tokens": after.spec_num_accepted_tokens - before.spec_num_accepted_tokens,
                # of the drafts that had a token at position j, the share whose token j was accepted
                "acceptance_per_position": [
                    a / d if d else 0.0 for a, d in zip(accepted_pos, drafted_pos, strict=True)
                ],
            }
            row["steps_off"], row["steps_on"] = steps["off"], steps["on"]
            row["speedup"] = row["on_tok_s"] / row["off_tok_s"]
            row["cpu_speedup"] = row["on_tok_cpu_s"] / row["off_tok_cpu_s"]
            row["load_avg_1m"] = os.getloadavg()[0]
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if not k.endswith("_runs")}), flush=True)
        for engine in engines.values():
            engine.shutdown()

    print(
        "\n| quantization | workload | c | off tok/s | on tok/s | speedup | speedup (CPU time) "
        "| steps off / on | accepted / draft tokens | acceptance per position |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        pos = " ".join(f"{p:.2f}" for p in r["acceptance_per_position"])
        ratio = f"{r['accepted_tokens']}/{r['draft_tokens']}"
        print(
            f"| {r['quantization']} | {r['workload']} | {r['concurrency']} | {r['off_tok_s']:.1f} | "
            f"{r['on_tok_s']:.1f} | {r['speedup']:.2f}x | {r['cpu_speedup']:.2f}x | "
            f"{r['steps_off']} / {r['steps_on']} | {ratio} | {pos} |"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
