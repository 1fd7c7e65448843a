"""Which implementation runs the hot spots (GEMMs, decode attention, RMSNorm), chosen once per model from
`EngineConfig.cpu_kernels` and the one CPU description (paddlellm/cpu.py):

- 'auto': the native library of the best kernel ISA the CPU has (avx512_bf16 > avx512 > avx2), else Paddle's
  ops with a warning (no native ISA, no compiler, unwritable cache);
- 'native': the same, but a ConfigError saying why instead of the fallback;
- 'avx512_bf16' / 'avx512' / 'avx2': that ISA's library (forcing a lower ISA than the CPU's best, e.g. to test
  the AVX2 kernels on an AVX-512 machine); a ConfigError when the CPU lacks it;
- 'paddle': Paddle's ops everywhere (the reference path; always on GPU).
On the Paddle path RMSNorm is Paddle's fused op only where it can run (GPU, CPUs with AVX-512), else
plain ops.
`dtype='bfloat16'` needs the native kernels (any ISA) and says so otherwise. `quantization='wint8'` /
`'wint4'` run the quantized kernels of the selected ISA (paddlellm/native/quant_gemm.c), or the same math in
Paddle ops on the Paddle path; 'auto' is resolved from the checkpoint before (worker/model_runner.py).
Nothing selected here can execute an instruction the CPU description lacks; `Kernels.required_cpu_flags`
says what each choice needs.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from paddlellm.config import EngineConfig
from paddlellm.cpu import KERNEL_ISA_FLAGS, PADDLE_FUSED_CPU_FLAGS, CpuInfo, read_cpu
from paddlellm.errors import ConfigError
from paddlellm.layers.decode_attention import NativeDecodeAttention
from paddlellm.layers.decode_step import NativeOps
from paddlellm.layers.gemm import Gemm, PackedGemm, PaddleGemm
from paddlellm.layers.norm import FusedRMSNorm, NativeNorms, NormFactory, PaddleRMSNorm
from paddlellm.layers.quant_gemm import Int4Gemm, Int8Gemm, PaddleInt4Gemm, PaddleInt8Gemm
from paddlellm.layers.thread_team import ThreadTeam
from paddlellm.native.build import NativeLibrary, NativeUnavailable, load

log = logging.getLogger("paddlellm.kernels")


@dataclass(frozen=True)
class Kernels:
    gemm: Gemm
    norm: NormFactory
    decode_attention: NativeDecodeAttention | None = None  # None: Paddle's gather + matmul path
    ops: NativeOps | None = None  # native rotary + cache write and SwiGLU; None: Paddle's ops
    native: NativeLibrary | None = None  # the loaded library (the fused decode pass calls it)
    threads: int = 1
    isa: str = "paddle"  # the native kernel ISA, or 'paddle'
    required_cpu_flags: frozenset[str] = frozenset()  # every CPU flag the choices above execute
    # The native calls' team size, set per step by the runner's TeamTuner (thread_team.py); `threads`: its max
    team: ThreadTeam = dataclasses.field(default_factory=lambda: ThreadTeam(1))

    def describe(self) -> str:
        norm = getattr(self.norm, "__name__", type(self.norm).__name__)
        return f"{self.isa}: {getattr(self.gemm, 'name', '?')} GEMM, {norm} RMSNorm"


def paddle_kernels(device: str, cpu: CpuInfo) -> Kernels:
    """Paddle's ops; its fused RMSNorm only where it was built to run."""
    if device != "cpu":
        return Kernels(PaddleGemm(), FusedRMSNorm)
    if cpu.paddle_fused_ops_ok:
        return Kernels(PaddleGemm(), FusedRMSNorm, required_cpu_flags=PADDLE_FUSED_CPU_FLAGS)
    return Kernels(PaddleGemm(), PaddleRMSNorm)


def select_kernels(config: EngineConfig, cpu: CpuInfo | None = None) -> Kernels:
    cpu = cpu or read_cpu()
    mode, bf16, quant = config.cpu_kernels, config.dtype == "bfloat16", config.quantization
    if quant == "auto":
        raise ConfigError("quantization='auto' is resolved from the checkpoint before kernels are chosen")
    int8 = quant == "wint8"
    if bf16 and quant != "none":
        raise ConfigError(f"dtype='bfloat16' and quantization='{quant}' both set the weights: choose one")
    if config.device != "cpu" or mode == "paddle":
        if bf16:
            raise ConfigError("dtype='bfloat16' runs on the native CPU kernels only (device cpu, not paddle)")
        kernels = paddle_kernels(config.device, cpu)
        if quant == "none":
            return kernels
        return dataclasses.replace(kernels, gemm=PaddleInt8Gemm() if int8 else PaddleInt4Gemm())
    isa = cpu.best_kernel_isa if mode in ("auto", "native") else mode
    try:
        if isa is None:
            need = " or ".join("+".join(sorted(f)) for f in KERNEL_ISA_FLAGS.values())
            raise NativeUnavailable(f"the CPU has no native kernel ISA (needs {need})")
        native = load(isa, cpu)
    except NativeUnavailable as e:
        if mode != "auto" or bf16:
            raise ConfigError(f"cpu_kernels='{mode}', dtype='{config.dtype}': {e}") from e
        log.warning("native CPU kernels unavailable, using Paddle's ops: %s", e)
        return paddle_kernels(config.device, cpu)
    threads = config.threads_per_rank
    team = ThreadTeam(threads)
    kernels = Kernels(
        _gemm(native, team, quant, bf16),
        NativeNorms(native, team),
        NativeDecodeAttention(native, team),
        NativeOps(native, team),
        native,
        threads,
        native.isa,
        KERNEL_ISA_FLAGS[native.isa],
        team,
    )
    log.info("native CPU kernels %s, %d threads (%s)", kernels.describe(), threads, cpu.describe())
    return kernels


def _gemm(native: NativeLibrary, team: ThreadTeam, quantization: str, bf16: bool) -> Gemm:
    if quantization == "wint8":
        return Int8Gemm(native, team)
    if quantization == "wint4":
        return Int4Gemm(native, team)
    return PackedGemm(native, team, bf16)
