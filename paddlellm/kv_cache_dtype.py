"""--kv-cache-dtype: the precision the paged KV cache stores K and V in.

auto (the default) stores float16 when the weights run quantized (wint4 / wint8: the README's serve command,
a GGUF run as stored) on the native CPU kernels, and float32 otherwise, so a full-precision checkpoint stays
transformers-exact. float16 is llama.cpp's default cache type; values are rounded to nearest on write and
widened exactly on read, the attention math stays fp32.

Why: a decode step reads every cached K and V row of every running request once per layer. At 32 requests of
~160 tokens that is ~236 MB in fp32 for the default model, more than half of the step on both ISAs
(benchmarks/bench_quant_step.py --profile); fp16 halves it. The quality gate (tests/quality) covers the
default mode, fp16 cache included.

float16 needs the native kernels (Paddle's CPU scatter has no float16 kernel); the Paddle path keeps float32.
"""

from __future__ import annotations

from paddlellm.errors import ConfigError

KV_CACHE_DTYPE_CHOICES = ("auto", "float32", "float16")


def resolve_kv_cache_dtype(choice: str, quantization: str, native: bool) -> str:
    """'float32' or 'float16' for `choice`, given the resolved quantization and whether the native CPU
    kernels (rotary + cache write, attention) run."""
    if choice == "auto":
        return "float16" if native and quantization != "none" else "float32"
    if choice == "float16" and not native:
        raise ConfigError(
            "config 'kv_cache_dtype': float16 needs the native CPU kernels (device cpu, cpu_kernels not "
            "paddle, a CPU with AVX2 + FMA + F16C)"
        )
    return choice


def kv_value_bytes(dtype: str) -> int:
    return 2 if dtype == "float16" else 4
