"""Which implementation runs the CPU hot spots: the project's C kernels (paddlellm/native) or Paddle's ops.

`select_kernels(config)` reads `EngineConfig.cpu_kernels` once per model: 'auto' = native when the device is
the CPU and the kernels build here (AVX-512 + a C compiler), else Paddle; 'native' = native or a ConfigError
saying why not; 'paddle' = Paddle's ops everywhere (the reference path, and GPU).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from paddlellm.config import EngineConfig
from paddlellm.errors import ConfigError
from paddlellm.layers.decode_attention import NativeDecodeAttention
from paddlellm.layers.gemm import Gemm, PackedGemm, PaddleGemm
from paddlellm.native.build import NativeUnavailable, load

log = logging.getLogger("paddlellm.kernels")


@dataclass(frozen=True)
class Kernels:
    gemm: Gemm
    decode_attention: NativeDecodeAttention | None = None  # None: Paddle's gather + matmul path

    @property
    def name(self) -> str:
        return "native" if self.decode_attention is not None else "paddle"


def select_kernels(config: EngineConfig) -> Kernels:
    if config.device != "cpu" or config.cpu_kernels == "paddle":
        return Kernels(PaddleGemm())
    try:
        native = load()
    except NativeUnavailable as e:
        if config.cpu_kernels == "native":
            raise ConfigError(f"cpu_kernels='native': {e}") from e
        log.warning("native CPU kernels unavailable, using Paddle's ops: %s", e)
        return Kernels(PaddleGemm())
    threads = config.threads_per_rank
    return Kernels(PackedGemm(native, threads), NativeDecodeAttention(native, threads))
