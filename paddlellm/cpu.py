"""CpuInfo: the one description of the CPU every CPU code path is chosen from.

Read once per process (`read_cpu`, cached) from `/proc/cpuinfo`, or from the file `$PADDLELLM_CPUINFO` names:
a fake description in the same format, so a machine with AVX-512 can run (and test) everything exactly as an
AVX2-only CPU would have it chosen. Users of it: the native kernel builder and loader (which ISA library),
kernel selection (native per ISA, Paddle's plain ops, or Paddle's fused CPU ops), and the process tuning
(MKL's AMD switch). No paddle, no numpy: the launcher uses it too.

Kernel ISAs, best first (one shared library each, paddlellm/native):
- `avx512_bf16`: AVX-512 F/VL/BW + AVX512_BF16 (`vdpbf16ps` for bf16 weights) — Intel Cooper Lake and
  later server CPUs, AMD Zen 4+;
- `avx512`: AVX-512 F/VL (bf16 weights widened to fp32 in registers) — Intel Skylake-SP and later;
- `avx2`: AVX2 + FMA + F16C — AMD Zen 1-3, Intel Haswell and later client CPUs.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

CPUINFO_ENV = "PADDLELLM_CPUINFO"
PROC_CPUINFO = "/proc/cpuinfo"

# Kernel ISA -> the /proc/cpuinfo flags its library's code needs (what its compiler flags enable).
KERNEL_ISA_FLAGS: dict[str, frozenset[str]] = {
    # AVX512_BF16 CPUs (Cooper Lake, Sapphire Rapids, Zen 4 and later) all have VNNI: its int8 dot products
    # serve --quantization there.
    "avx512_bf16": frozenset(
        {"avx2", "fma", "f16c", "avx512f", "avx512vl", "avx512bw", "avx512_bf16", "avx512_vnni"}
    ),
    "avx512": frozenset({"avx2", "fma", "f16c", "avx512f", "avx512vl"}),
    "avx2": frozenset({"avx2", "fma", "f16c"}),
}
KERNEL_ISAS = tuple(KERNEL_ISA_FLAGS)  # best first

# Paddle's fused CPU ops (fused_rms_norm's RmsNormAvxKernel) are compiled for AVX-512 with no runtime check.
PADDLE_FUSED_CPU_FLAGS = frozenset({"avx512f"})


@dataclass(frozen=True)
class CpuInfo:
    vendor: str  # GenuineIntel, AuthenticAMD, ... ('' when unknown)
    model_name: str
    flags: frozenset[str]
    source: str = PROC_CPUINFO  # where the description came from (a fake one says so in logs)

    def has(self, flags: frozenset[str] | set[str]) -> bool:
        return flags <= self.flags

    @property
    def kernel_isas(self) -> tuple[str, ...]:
        """Every native kernel ISA this CPU runs, best first."""
        return tuple(isa for isa in KERNEL_ISAS if self.has(KERNEL_ISA_FLAGS[isa]))

    @property
    def best_kernel_isa(self) -> str | None:
        isas = self.kernel_isas
        return isas[0] if isas else None

    def missing(self, isa: str) -> list[str]:
        return sorted(KERNEL_ISA_FLAGS[isa] - self.flags)

    @property
    def paddle_fused_ops_ok(self) -> bool:
        return self.has(PADDLE_FUSED_CPU_FLAGS)

    @property
    def is_amd(self) -> bool:
        return self.vendor == "AuthenticAMD"

    def mkl_env(self) -> dict[str, str]:
        """Environment MKL needs before its first call: on AMD, MKL_DEBUG_CPU_TYPE=5 selects its AVX2 kernels
        (it picks SSE ones otherwise; measured 2.2x on the LM-head GEMM). Intel CPUs get nothing: the
        variable would cap them at AVX2."""
        return {"MKL_DEBUG_CPU_TYPE": "5"} if self.is_amd else {}

    def describe(self) -> str:
        fake = "" if self.source == PROC_CPUINFO else f" (description from {self.source})"
        name = self.model_name or "unknown CPU"
        return f"{name} [{self.vendor or '?'}]: kernel ISAs {self.kernel_isas}{fake}"


def parse_cpuinfo(text: str, source: str = PROC_CPUINFO) -> CpuInfo:
    """The first processor's vendor, model name and flags from /proc/cpuinfo-format text."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep:
            if fields and not line.strip():
                break  # end of the first processor's block
            continue
        fields.setdefault(key, value.strip())
    return CpuInfo(
        vendor=fields.get("vendor_id", ""),
        model_name=fields.get("model name", ""),
        flags=frozenset(fields.get("flags", "").split()),
        source=source,
    )


@functools.lru_cache(maxsize=4)
def _read(path: str) -> CpuInfo:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return parse_cpuinfo(f.read(), path)
    except OSError:
        return CpuInfo("", "", frozenset(), path)  # nothing known: Paddle's plain ops only


def read_cpu(path: str | None = None) -> CpuInfo:
    """This process's CPU description: `path`, else `$PADDLELLM_CPUINFO`, else /proc/cpuinfo (cached)."""
    return _read(path or os.environ.get(CPUINFO_ENV) or PROC_CPUINFO)
