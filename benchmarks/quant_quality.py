"""Quality of lower-precision weights against fp32 on the same checkpoint, teacher-forced.

    .venv/bin/python benchmarks/quant_quality.py [--model DIR] [--variants float32,bfloat16,wint8]

The English and Chinese texts in benchmarks/data/ are tokenized with the model's tokenizer and cut into
windows of at most --window tokens; each variant scores every window in one prompt pass
(`Executor.prompt_logits`). Reported per text and overall: top-1 agreement with fp32 (the share of positions
whose most likely next token is fp32's) and perplexity of the text (exp of the mean negative log-likelihood
of each actual next token), with its change against fp32. Prints a Markdown table; --out writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = {"English": "quality_en.txt", "Chinese": "quality_zh.txt"}


def windows(ids: list[int], size: int) -> list[list[int]]:
    return [ids[i : i + size] for i in range(0, len(ids) - 1, size) if len(ids[i : i + size]) > 1]


def score(model: str, variant: str, texts: dict[str, list[list[int]]], threads: int) -> dict[str, np.ndarray]:
    """Per text: the [positions, vocab] log-softmax of every window, concatenated."""
    from paddlellm.config import EngineConfig
    from paddlellm.engine.core import LLMEngine

    weights = {"quantization": variant} if variant.startswith("wint") else {"dtype": variant}
    engine = LLMEngine.create(EngineConfig(model=model, max_model_len=2048, num_threads=threads, **weights))
    out = {}
    for name, wins in texts.items():
        parts = []
        for w in wins:
            logits = engine.executor.prompt_logits(w)[:-1].astype(np.float64)  # predicts w[1:]
            logits -= logits.max(axis=1, keepdims=True)
            parts.append(logits - np.log(np.exp(logits).sum(axis=1, keepdims=True)))
        out[name] = np.concatenate(parts)
    engine.executor.shutdown()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(REPO, ".models", "SmolLM2-135M-Instruct"))
    ap.add_argument("--variants", default="float32,bfloat16,wint8")
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    sys.path.insert(0, REPO)
    from paddlellm.model_info import resolve_checkpoint
    from paddlellm.text.tokenizer import TextTokenizer

    path = resolve_checkpoint(args.model)
    tok = TextTokenizer.from_dir(path)
    texts, targets = {}, {}
    for name, file in TEXTS.items():
        with open(os.path.join(REPO, "benchmarks", "data", file), encoding="utf-8") as f:
            ids = tok.encode(f.read(), add_special_tokens=False)
        texts[name] = windows(ids, args.window)
        targets[name] = np.concatenate([np.array(w[1:]) for w in texts[name]])
    variants = args.variants.split(",")
    if variants[0] != "float32":
        variants.insert(0, "float32")
    scores = {v: score(path, v, texts, args.threads) for v in variants}
    rows, table = [], {}
    for v in variants:
        for name in [*texts, "all"]:
            names = list(texts) if name == "all" else [name]
            lp = np.concatenate([scores[v][n] for n in names])
            ref = np.concatenate([scores["float32"][n] for n in names])
            tgt = np.concatenate([targets[n] for n in names])
            ppl = float(np.exp(-lp[np.arange(len(tgt)), tgt].mean()))
            ref_ppl = float(np.exp(-ref[np.arange(len(tgt)), tgt].mean()))
            agree = float((lp.argmax(axis=1) == ref.argmax(axis=1)).mean())
            table[f"{v}/{name}"] = {"tokens": len(tgt), "top1_agreement": agree, "perplexity": ppl,
                                    "perplexity_change": ppl / ref_ppl - 1}
            rows.append(f"| {v} | {name} | {len(tgt)} | {agree * 100:.2f} % | {ppl:.3f} | "
                        f"{(ppl / ref_ppl - 1) * 100:+.2f} % |")
    print(f"model {os.path.basename(path.rstrip('/'))}, windows of {args.window} tokens, teacher-forced\n")
    print("| weights | text | tokens | top-1 agreement with fp32 | perplexity | vs fp32 |")
    print("|---|---|---:|---:|---:|---:|")
    print("\n".join(rows))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(table, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
