"""Which implementation runs the CPU hot spots: the project's C kernels (paddlellm/native) or Paddle's ops.

`select_kernels(config)` reads `EngineConfig.cpu_kernels` once per model: 'auto' = native when the device is
the CPU and the kernels build here (AVX-512 + a C compiler), else Paddle; 'native' = native or a ConfigError
saying why not; 'paddle' = Paddle's ops everywhere (the reference path, and GPU). `dtype='bfloat16'` needs the
native kernels and a CPU with AVX512_BF16, and says so otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from paddlellm.config import EngineConfig
from paddlellm.errors import ConfigError
from paddlellm.layers.decode_attention import NativeDecodeAttention
from paddlellm.layers.gemm import Gemm, PackedGemm, PaddleGemm
from paddlellm.native.build import BF16_CPU_FLAG, NativeUnavailable, cpu_flags, load

log = logging.getLogger("paddlellm.kernels")


@dataclass(frozen=True)
class Kernels:
    gemm: Gemm
    decode_attention: NativeDecodeAttention | None = None  # None: Paddle's gather + matmul path


def select_kernels(config: EngineConfig) -> Kernels:
    bf16 = config.dtype == "bfloat16"
    if config.device != "cpu" or config.cpu_kernels == "paddle":
        if bf16:
            raise ConfigError("dtype='bfloat16' runs on the native CPU kernels only (device cpu, not paddle)")
        return Kernels(PaddleGemm())
    try:
        native = load()
    except NativeUnavailable as e:
        if config.cpu_kernels == "native" or bf16:
            raise ConfigError(f"cpu_kernels='{config.cpu_kernels}', dtype='{config.dtype}': {e}") from e
        log.warning("native CPU kernels unavailable, using Paddle's ops: %s", e)
        return Kernels(PaddleGemm())
    if bf16 and BF16_CPU_FLAG not in cpu_flags():
        raise ConfigError(f"dtype='bfloat16': this CPU lacks {BF16_CPU_FLAG}")
    threads = config.threads_per_rank
    gemm = PackedGemm(native, threads, bf16)
    log.info("native CPU kernels: %s GEMM + decode attention, %d threads", gemm.name, threads)
    return Kernels(gemm, NativeDecodeAttention(native, threads))
