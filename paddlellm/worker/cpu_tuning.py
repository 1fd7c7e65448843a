"""Process-level CPU tuning every process that runs the model applies (ModelRunner does, before any matmul).

1. Heap: Paddle allocates CPU tensors through malloc. glibc serves big blocks with fresh mmap()s and unmaps
   them on free, so each step's large activations (gathered KV context, [batch, vocab] logits, prefill
   activations) page-fault their memory in again: measured here, an add on a 2.9 MB tensor took 0.9 ms
   instead of 36 us, a KV gather 1.6 ms instead of 0.12 ms. Raising the mmap and trim thresholds keeps
   freed blocks in the heap for reuse.
2. MKL on AMD: `CpuInfo.mkl_env()` (paddlellm/cpu.py) says what MKL needs on this CPU (MKL_DEBUG_CPU_TYPE=5
   on AMD, nothing on Intel). MKL reads it at its first call, so setting it here, before the model's first
   matmul, still works; an explicit setting is left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from paddlellm.cpu import CpuInfo

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_heap_mapped(mmap_threshold: int = 1 << 30, trim_threshold: int = 1 << 31) -> bool:
    """Best effort (glibc only): True when both thresholds were set."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(min(mmap_threshold, 2**31 - 1)))
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(min(trim_threshold, 2**31 - 1)))
        return bool(ok)
    except (OSError, AttributeError):
        return False


def apply_mkl_env(cpu: CpuInfo) -> dict[str, str]:
    """Set what `cpu.mkl_env()` asks for where unset; returns what it set."""
    wanted = {k: v for k, v in cpu.mkl_env().items() if k not in os.environ}
    os.environ.update(wanted)
    return wanted


def tune_process(cpu: CpuInfo) -> None:
    keep_heap_mapped()
    apply_mkl_env(cpu)
