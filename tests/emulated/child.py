"""Run by test_avx2_emulated.py (under qemu, and natively): load a checkpoint with each given `cpu_kernels`,
generate a few greedy tokens for fixed prompts, print one JSON line per choice. Nothing else runs, so the
only instructions executed are what the engine picks for the CPU description it reads."""

from __future__ import annotations

import json
import sys

from paddlellm.config import EngineConfig
from paddlellm.engine.core import LLMEngine
from paddlellm.sampling import SamplingParams


def main(path: str, choices: list[str]) -> None:
    params = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
    for choice in choices:  # cpu_kernels[:quantization]
        kernels, _, quant = choice.partition(":")
        config = EngineConfig(
            model=path, cpu_kernels=kernels, num_threads=1, max_model_len=128, block_size=16,
            num_gpu_blocks_override=32, max_num_seqs=4, quantization=quant or "none",
        )
        engine = LLMEngine.create(config)
        for i in range(3):
            engine.add_request(f"r{i}", [(37 * j + 11 * i) % 900 + 5 for j in range(3 + 7 * i)], params)
        tokens: dict[str, list[int]] = {}
        for out in engine.run_until_done():
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
        chosen = engine.executor.runner.kernels  # type: ignore[attr-defined]
        norm = getattr(chosen.norm, "__name__", type(chosen.norm).__name__)
        row = {"cpu_kernels": choice, "isa": chosen.isa, "norm": norm, "gemm": chosen.gemm.name}
        row["tokens"] = tokens
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
