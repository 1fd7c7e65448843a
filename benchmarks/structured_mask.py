"""Structured output, measured: grammar compile time and mask time per token (paddlellm.structured).

    python benchmarks/structured_mask.py [--model DIR] [--walks 8] [--steps 200] [--batch 32]

For each workload (JSON schemas of growing size, json_object, a regex, a choice, a Lark grammar):
- compile: a cold compile on a fresh GrammarCompiler (no cache), spec to usable start state, wall time in the
  pool; median of 5 compiles on fresh compilers;
- mask: `GrammarMatcher.fill_mask` per generated token along seeded random walks (tokens drawn uniformly
  among the allowed ones, as tests/unit/structured_walk.py does), mean / p50 / p99 in microseconds;
- accept: `GrammarMatcher.accept` per token (validate + consume);
- batch step: `--batch` matchers of the workload filling their rows one after another, as a step of the
  engine would with --batch concurrent requests of that schema, in milliseconds per step.
The unpacking that the walk itself needs is not timed. One thread (the engine loop's).

Prints a markdown table. Not a test: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from paddlellm.structured.bitmask import unpack_token_bitmask  # noqa: E402
from paddlellm.structured.compiler import GrammarCompiler  # noqa: E402
from paddlellm.structured.spec import StructuredSpec  # noqa: E402
from paddlellm.structured.tokenizer_info import TokenizerInfo  # noqa: E402

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": "string", "pattern": "^[a-z]+@[a-z]+\\.com$"},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 1, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["street", "zip"],
            "additionalProperties": False,
        },
        "nick": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
    "required": ["name", "age", "tags", "address"],
    "additionalProperties": False,
}


def _wide(n: int) -> dict:
    props = {
        f"field_{i}": [{"type": "integer"}, {"type": "string", "maxLength": 16}, {"type": "boolean"}][i % 3]
        for i in range(n)
    }
    return {
        "type": "object",
        "properties": props,
        "required": list(props)[: n // 2],
        "additionalProperties": False,
    }


WORKLOADS: list[tuple[str, StructuredSpec]] = [
    (
        "json_schema small (1 int)",
        StructuredSpec.json_schema(
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
        ),
    ),
    ("json_schema person (nested, 6 props)", StructuredSpec.json_schema(PERSON)),
    ("json_schema wide (60 props)", StructuredSpec.json_schema(_wide(60))),
    (
        "json_schema enum (2000 strings)",
        StructuredSpec.json_schema({"enum": [f"item-{i}" for i in range(2000)]}),
    ),
    ("json_object", StructuredSpec.json_object()),
    ("json_object, flexible whitespace", StructuredSpec.json_object(whitespace_flexible=True)),
    ("regex email", StructuredSpec.regex(r"[a-z]{3,12}@[a-z]{3,8}\.(com|org|net)")),
    ("choice (4)", StructuredSpec.choice(["positive", "negative", "neutral", "mixed"])),
    (
        "grammar (Lark arithmetic)",
        StructuredSpec.grammar(
            'start: expr\nexpr: term (("+" | "-") term)*\nterm: factor (("*" | "/") factor)*\n'
            'factor: NUMBER | "(" expr ")"\nNUMBER: /[0-9]{1,6}/'
        ),
    ),
]


def _closers(info: TokenizerInfo) -> np.ndarray:
    from paddlellm.text.tokenizer import TextTokenizer

    text = TextTokenizer.from_dir(info.path)
    ids = [i for i in range(text.vocab_size) if text.token_bytes(i) in (b'"', b"}", b"]", b")")]
    return np.asarray(ids + list(info.eos_token_ids))


def measure(
    info: TokenizerInfo, spec: StructuredSpec, walks: int, steps: int, batch: int
) -> dict[str, float]:
    compile_s = []
    for _ in range(5):
        with GrammarCompiler(info, max_workers=1) as compiler:
            compiled = compiler.compile(spec).result()
        compile_s.append(compiled.compile_seconds)
    closers, eos = _closers(info), set(info.eos_token_ids)
    mask_t: list[float] = []
    accept_t: list[float] = []
    row = np.empty(info.mask_words, dtype=np.int32)
    for seed in range(walks):
        rng, m = np.random.default_rng(seed), compiled.matcher()
        for step in range(steps):
            if m.is_terminated:
                break
            t = time.perf_counter()
            m.fill_mask(row)
            mask_t.append(time.perf_counter() - t)
            allowed = np.flatnonzero(unpack_token_bitmask(row, info.vocab_size))
            if step > steps // 2:  # steer to an end, as the tests' walk does
                closing = np.intersect1d(allowed, closers)
                allowed = closing if closing.size else allowed
            token = int(rng.choice(allowed))
            t = time.perf_counter()
            m.accept(token)
            accept_t.append(time.perf_counter() - t)
            if token in eos:
                break
    # steps of `batch` concurrent requests of this workload, each at its own point of its own walk: the time
    # to fill all rows (what a step would add); drawing and accepting the tokens is not timed
    rng = np.random.default_rng(1000)
    matchers, rows = [compiled.matcher() for _ in range(batch)], np.empty((batch, info.mask_words), np.int32)
    step_t = []
    for step in range(40):
        t = time.perf_counter()
        for b, m in enumerate(matchers):
            m.fill_mask(rows[b])
        step_t.append(time.perf_counter() - t)
        for b, m in enumerate(matchers):
            allowed = np.flatnonzero(unpack_token_bitmask(rows[b], info.vocab_size))
            if step > 20:
                closing = np.intersect1d(allowed, closers)
                allowed = closing if closing.size else allowed
            token = int(rng.choice(allowed))
            if token in eos or not m.accept(token) or m.is_terminated:
                matchers[b] = compiled.matcher()  # a new request takes the slot
    us = np.asarray(mask_t) * 1e6
    return {
        "compile_ms": statistics.median(compile_s) * 1e3,
        "mask_mean_us": float(us.mean()),
        "mask_p50_us": float(np.percentile(us, 50)),
        "mask_p99_us": float(np.percentile(us, 99)),
        "accept_mean_us": float(np.mean(accept_t) * 1e6),
        "batch_step_ms": statistics.median(step_t) * 1e3,  # median over 40 steps
        "tokens": float(len(mask_t)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint directory (default: the default model)")
    ap.add_argument("--walks", type=int, default=8)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    model = args.model
    if model is None:
        from paddlellm.tools.default_model import ensure_default_model

        model = ensure_default_model()
    start = time.perf_counter()
    info = TokenizerInfo.from_dir(model)
    print(
        f"tokenizer: {model} ({info.vocab_size} rows, {info.tokenizer_vocab_size} tokens), "
        f"TokenizerInfo built in {(time.perf_counter() - start) * 1e3:.0f} ms\n"
    )
    print(
        f"| workload | compile ms | mask µs mean | p50 | p99 | accept µs | step of {args.batch} ms | tokens |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, spec in WORKLOADS:
        r = measure(info, spec, args.walks, args.steps, args.batch)
        cells = [r["compile_ms"], r["mask_mean_us"], r["mask_p50_us"], r["mask_p99_us"], r["accept_mean_us"]]
        cells_text = " | ".join(f"{c:.1f}" for c in cells)
        print(f"| {name} | {cells_text} | {r['batch_step_ms']:.2f} | {r['tokens']:.0f} |")


if __name__ == "__main__":
    main()
