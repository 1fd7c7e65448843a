"""Quality of lower-precision weights against fp32 on the same checkpoint, teacher-forced.

    .venv/bin/python benchmarks/quant_quality.py [--model DIR] [--variants float32,bfloat16,wint8,wint4]
        [--tokens N] [--window N] [--cpu-kernels auto|avx2|...] [--out FILE]

The English and Chinese texts in benchmarks/data/ are tokenized with the model's tokenizer (cut to their
first --tokens tokens when given) and cut into windows of at most --window tokens; each variant scores every
window in one prompt pass (`Executor.prompt_logits`). Reported per text and overall: top-1 agreement with fp32
(the share of positions whose most likely next token is fp32's), the mean KL divergence KL(fp32 || variant)
of the next-token distributions, and perplexity of the text (exp of the mean negative log-likelihood of each
actual next token), with its change against fp32. Prints a Markdown table; --out writes JSON.

A variant `wint8-requant` / `wint4-requant` quantizes the fp32 weights with our own quantizers even where the
checkpoint keeps its GGUF's blocks (the path a full-precision checkpoint takes). A `-kv16` / `-kv32` suffix
sets the KV cache's precision (default: --kv-cache-dtype auto, float16 for wint8 / wint4), e.g.
`float32-kv16`.

The functions are importable (`from benchmarks.quant_quality import ...`): the CI quality gate
(tests/quality/test_quant_quality.py) scores its short window with them, so gate and benchmark measure the
same thing; `--tokens 256 --window 256` is the gate's window.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(REPO, "benchmarks", "data")
TEXTS = {"English": "quality_en.txt", "Chinese": "quality_zh.txt"}
DEFAULT_MODEL = os.path.join(REPO, ".models", "SmolLM2-135M-Instruct")
# A variant name's suffix: quantize the fp32 weights even where the checkpoint keeps its GGUF's blocks (the
# default model runs its own Q4_1 blocks with wint4, so only this exercises quantize_q4 on it).
REQUANT = "-requant"
# And the KV cache's precision (--kv-cache-dtype; unsuffixed variants take its default, auto: float16 for
# wint8 / wint4, float32 otherwise): `float32-kv16` isolates what an fp16 cache costs, `wint4-kv32` is wint4
# with the float32 cache it had before.
KV_SUFFIXES = {"-kv16": "float16", "-kv32": "float32"}


@dataclass(frozen=True)
class Figures:
    """One variant against fp32 over some positions."""

    tokens: int  # scored positions
    top1_agreement: float  # share of positions whose argmax is fp32's
    mean_kl: float  # mean over positions of KL(fp32 || variant), nats
    perplexity: float  # of the text's actual next tokens
    perplexity_change: float  # perplexity / fp32's perplexity - 1


def text_ids(encode: Callable[[str], list[int]], max_tokens: int | None = None) -> dict[str, list[int]]:
    """Token ids of every text in TEXTS, each cut to its first `max_tokens` when given."""
    out = {}
    for name, file in TEXTS.items():
        with open(os.path.join(DATA_DIR, file), encoding="utf-8") as f:
            out[name] = encode(f.read())[:max_tokens]
    return out


def windows(ids: Sequence[int], size: int) -> list[list[int]]:
    return [list(ids[i : i + size]) for i in range(0, len(ids) - 1, size) if len(ids[i : i + size]) > 1]


def targets(wins: list[list[int]]) -> np.ndarray:
    """The next token each scored position predicts (a window's first token has no predictor)."""
    return np.concatenate([np.asarray(w[1:], np.int64) for w in wins])


def log_probs(prompt_logits: Callable[[list[int]], np.ndarray], wins: list[list[int]]) -> np.ndarray:
    """[positions, vocab] float64 log-softmax of every window's next-token logits, concatenated."""
    parts = []
    for w in wins:
        logits = prompt_logits(w)[:-1].astype(np.float64)  # the last row predicts past the window
        logits -= logits.max(axis=1, keepdims=True)
        parts.append(logits - np.log(np.exp(logits).sum(axis=1, keepdims=True)))
    return np.concatenate(parts)


@dataclass(frozen=True)
class PositionStats:
    """Per scored position: texts pool without keeping every variant's [positions, vocab] arrays."""

    agree: np.ndarray  # bool: argmax equals fp32's
    kl: np.ndarray  # KL(fp32 || variant)
    nll: np.ndarray  # -log p(actual next token), this variant
    ref_nll: np.ndarray  # the same under fp32

    @staticmethod
    def of(lp: np.ndarray, ref: np.ndarray, tgt: np.ndarray) -> PositionStats:
        rows = np.arange(len(tgt))
        return PositionStats(
            agree=lp.argmax(axis=1) == ref.argmax(axis=1),
            kl=(np.exp(ref) * (ref - lp)).sum(axis=1),
            nll=-lp[rows, tgt],
            ref_nll=-ref[rows, tgt],
        )

    @staticmethod
    def concat(parts: Sequence[PositionStats]) -> PositionStats:
        fields = PositionStats.__annotations__
        return PositionStats(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))

    def figures(self) -> Figures:
        ppl, ref_ppl = float(np.exp(self.nll.mean())), float(np.exp(self.ref_nll.mean()))
        agree, kl = float(self.agree.mean()), float(self.kl.mean())
        return Figures(len(self.agree), agree, kl, ppl, ppl / ref_ppl - 1)


def weights_option(variant: str) -> dict[str, str]:
    """EngineConfig fields of a variant name: wint8 / wint4 are --quantization, the rest --dtype. Always an
    explicit quantization: the default `auto` would run a converted GGUF's own blocks as "float32"."""
    kv: dict[str, str] = {}
    for suffix, dtype in KV_SUFFIXES.items():
        if variant.endswith(suffix):
            variant, kv = variant.removesuffix(suffix), {"kv_cache_dtype": dtype}
    variant = variant.removesuffix(REQUANT)
    if variant.startswith("wint"):
        return {"quantization": variant, "dtype": "float32", **kv}
    return {"quantization": "none", "dtype": variant, **kv}


def blockless_view(checkpoint: str, dest: str) -> str:
    """`dest` made a view of `checkpoint` without the GGUF blocks a conversion keeps (symlinks, no copies), so
    --quantization quantizes the fp32 weights with our own quantizers (the path full-precision checkpoints
    take) instead of running the blocks as stored."""
    from paddlellm.quant_blocks import BLOCKS_FILE

    for name in os.listdir(checkpoint):
        if name != os.path.dirname(BLOCKS_FILE):
            os.symlink(os.path.join(checkpoint, name), os.path.join(dest, name))
    return dest


def score(
    model: str, variant: str, texts: dict[str, list[list[int]]], threads: int, cpu_kernels: str = "auto"
) -> dict[str, np.ndarray]:
    """Per text: log_probs of its windows under `variant`, on a fresh engine (one variant in memory)."""
    if REQUANT in variant:
        with tempfile.TemporaryDirectory(prefix="blockless_") as tmp:
            view = blockless_view(model, tmp)
            return score(view, variant.replace(REQUANT, ""), texts, threads, cpu_kernels)
    from paddlellm.config import EngineConfig
    from paddlellm.engine.core import LLMEngine

    longest = max(len(w) for wins in texts.values() for w in wins)
    config = EngineConfig(
        model=model, max_model_len=max(longest, 2), num_threads=threads, cpu_kernels=cpu_kernels,
        num_gpu_blocks_override=-(-longest // 64), block_size=64,  # one window's blocks, not a 2 GiB cache
        **weights_option(variant),
    )
    engine = LLMEngine.create(config)
    try:
        runner = getattr(engine.executor, "runner", None)  # in-process executor: check what it resolved
        if runner is not None and runner.config.quantization != config.quantization:
            raise RuntimeError(f"{variant}: the engine runs {runner.config.quantization}")
        return {name: log_probs(engine.executor.prompt_logits, wins) for name, wins in texts.items()}
    finally:
        engine.executor.shutdown()


def compare(
    model: str,
    variants: Sequence[str],
    texts: dict[str, list[list[int]]],
    threads: int,
    cpu_kernels: str = "auto",
) -> dict[str, dict[str, Figures]]:
    """variant -> text name (and "all", every text pooled) -> Figures against float32 on the same kernels."""
    ref = score(model, "float32", texts, threads, cpu_kernels)
    tgt = {name: targets(wins) for name, wins in texts.items()}
    out: dict[str, dict[str, Figures]] = {}
    for v in variants:
        lp = ref if v == "float32" else score(model, v, texts, threads, cpu_kernels)
        stats = {name: PositionStats.of(lp[name], ref[name], tgt[name]) for name in texts}
        out[v] = {name: s.figures() for name, s in stats.items()}
        out[v]["all"] = PositionStats.concat(list(stats.values())).figures()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--variants", default="float32,bfloat16,wint8")
    ap.add_argument("--tokens", type=int, default=None, help="cut each text to its first N tokens")
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cpu-kernels", default="auto")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    sys.path.insert(0, REPO)
    from paddlellm.model_info import resolve_checkpoint
    from paddlellm.text.tokenizer import TextTokenizer

    path = resolve_checkpoint(args.model)
    tok = TextTokenizer.from_dir(path)
    ids = text_ids(lambda s: tok.encode(s, add_special_tokens=False), args.tokens)
    texts = {name: windows(t, args.window) for name, t in ids.items()}
    variants = args.variants.split(",")
    if variants[0] != "float32":
        variants.insert(0, "float32")
    result = compare(path, variants, texts, args.threads, args.cpu_kernels)
    cut = f", first {args.tokens} tokens of each text" if args.tokens else ""
    print(f"model {os.path.basename(path.rstrip('/'))}, windows of {args.window} tokens{cut}, "
          f"kernels {args.cpu_kernels}, teacher-forced\n")
    print("| weights | text | tokens | top-1 agreement with fp32 | mean KL (nats) | perplexity | vs fp32 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for v, per_text in result.items():
        for name, f in per_text.items():
            print(f"| {v} | {name} | {f.tokens} | {f.top1_agreement * 100:.2f} % | {f.mean_kl:.2e} | "
                  f"{f.perplexity:.3f} | {f.perplexity_change * 100:+.2f} % |")
    if args.out:
        table = {f"{v}/{name}": asdict(f) for v, per_text in result.items() for name, f in per_text.items()}
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(table, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
