"""The `cpu_kernels` values the model-level tests (parity with transformers, batch invariance, TP=2 == TP=1)
run on: the best kernel ISA this CPU (description) has and, where that is not AVX2, the AVX2 kernels forced,
so an AVX-512 machine also proves what an AVX2-only machine would run. Paddle's ops where no ISA runs."""

from __future__ import annotations

from paddlellm.cpu import read_cpu


def model_kernels() -> list[str]:
    isas = read_cpu().kernel_isas
    if not isas:
        return ["paddle"]
    return [isas[0]] + (["avx2"] if isas[0] != "avx2" and "avx2" in isas else [])
