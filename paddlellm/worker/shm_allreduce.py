"""All-reduce (sum) between the tensor-parallel ranks of one engine.

CPU: `ShmAllReduce`, a shared-memory all-reduce between local rank processes. Paddle's gloo backend costs
~0.7 ms per call on this class of machine, which a decode step (2 all-reduces per layer) cannot afford.
GPU: `NcclAllReduce`, the same call signature over `paddle.distributed` (NCCL).

Shared-memory layout (one segment per engine instance, created by the executor, `ShmGroup`, whose name is
removed as soon as every rank has attached):

    header   64-byte lines: line 0 = magic, world, slot_bytes, abort; line 1 + r = rank r's sequence number
    data     2 parities x world slots x slot_bytes

Algorithm of one call (`ShmAllReduce.reduce_`), per chunk of at most slot_bytes:
  1. seq += 1; rank r copies its chunk into slot[seq % 2][r], then publishes seq in its header line.
  2. It waits until every rank has published >= seq (spin briefly, then yield, then sleep; see `_wait`).
  3. Every rank sums slot[.][0] + slot[.][1] + ... in rank order, in float32, into its own tensor, so all
     ranks hold bit-identical results.
Two parities make one barrier per call enough: a rank can only publish seq + 2 (reusing this parity's slot)
after every other rank published seq + 1, i.e. after they finished reading this call's slots.
Ordering relies on x86-64 TSO (the data stores are visible before the flag store); other CPUs would need
a fence.
"""

from __future__ import annotations

import math
import os
import secrets
import time
import weakref
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any

import numpy as np

_LINE = 64  # bytes per header line: every rank's flag on its own cache line
_Q = _LINE // 8  # int64 words per line
_MAGIC = 0x7064_6C6C_6D41_5231  # "pdllmAR1"
_HDR_WORLD, _HDR_SLOT, _HDR_ABORT = 1, 2, 3
DEFAULT_SLOT_BYTES = 4 << 20  # larger tensors are reduced in chunks

# Wait phases (seconds): ranks usually arrive within microseconds of each other, so a short spin catches
# most calls; a descheduled peer gets the core back through sched_yield, then sleeps bound the CPU burnt.
SPIN_S = 50e-6
YIELD_S = 2e-3


class AllReduceAborted(RuntimeError):
    """The executor aborted the group (a rank died) or a peer did not arrive in time."""


@dataclass(frozen=True)
class ShmSpec:
    """What a rank needs to attach to its group's segment (picklable, sent in the rank's Init message)."""

    name: str
    world: int
    slot_bytes: int

    @property
    def header_bytes(self) -> int:
        return _LINE * (1 + self.world)

    @property
    def total_bytes(self) -> int:
        return self.header_bytes + 2 * self.world * self.slot_bytes


SEGMENT_PREFIX = "pdllm_ar_"


def segment_prefix(suffix: str) -> str:
    """The /dev/shm name prefix of every segment an engine with this IPC suffix creates (a supervisor that
    killed the engine before its ranks attached removes what is left: `ShmGroup.release_name` never ran)."""
    return f"{SEGMENT_PREFIX}{suffix}_"


class ShmGroup:
    """Owner side (the executor): creates the segment, can abort waiting ranks, unlinks it exactly once."""

    def __init__(self, suffix: str, world: int, slot_bytes: int = DEFAULT_SLOT_BYTES) -> None:
        if world < 1 or slot_bytes < 4 or slot_bytes % _LINE:
            raise ValueError(f"bad shm group shape: world={world}, slot_bytes={slot_bytes}")
        # The instance suffix keeps servers apart; the random part keeps executors of one process apart.
        name = f"{segment_prefix(suffix)}{secrets.token_hex(4)}"
        self.spec = ShmSpec(name=name, world=world, slot_bytes=slot_bytes)
        self._shm = shared_memory.SharedMemory(name=name, create=True, size=self.spec.total_bytes)
        hdr = np.ndarray((self.spec.header_bytes // 8,), dtype=np.int64, buffer=self._shm.buf)
        hdr[:] = 0
        hdr[_HDR_WORLD], hdr[_HDR_SLOT], hdr[0] = world, slot_bytes, _MAGIC
        del hdr  # no exported buffers may outlive close()
        # Safety net: unlink even if shutdown() is never called (runs at interpreter exit too).
        self._finalizer = weakref.finalize(self, _unlink_quietly, self._shm)

    def abort(self) -> None:
        """Make every rank waiting in (or entering) an all-reduce raise AllReduceAborted."""
        if self._finalizer.alive:
            self._shm.buf.cast("q")[_HDR_ABORT] = 1

    def release_name(self) -> None:
        """Remove the segment's name once every rank has attached: the mappings live on, and no kill of
        any process (a SIGKILLed engine takes its resource tracker with it under Triton) can leave the
        name behind in /dev/shm."""
        if self._finalizer.alive:
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass

    def unlink(self) -> None:
        self._finalizer()

    @property
    def unlinked(self) -> bool:
        return not self._finalizer.alive


def _unlink_quietly(shm: shared_memory.SharedMemory) -> None:
    try:
        shm.close()
    except BufferError:
        pass  # a view still exists in this process; the name is what matters
    try:
        shm.unlink()
    except FileNotFoundError:
        pass


class _Raw:
    """A numpy view on raw memory (a paddle CPU tensor's buffer), writable, without copying."""

    __slots__ = ("__array_interface__",)

    def __init__(self, ptr: int, n: int) -> None:
        self.__array_interface__ = {"data": (ptr, False), "shape": (n,), "typestr": "<f4", "version": 3}


@dataclass
class WaitStats:
    calls: int = 0
    spun: int = 0  # calls that finished within the spin phase (including those that never waited)
    yielded: int = 0
    slept: int = 0
    wait_s: float = 0.0
    max_wait_s: float = 0.0


class ShmAllReduce:
    """Rank side: `all_reduce(x)` sums x over the ranks and returns the result: x itself, summed in place,
    for contiguous float32 tensors/arrays (the hot path); a new tensor for other dtypes or strided views."""

    def __init__(self, spec: ShmSpec, rank: int, timeout_s: float = 300.0) -> None:
        if not 0 <= rank < spec.world:
            raise ValueError(f"rank {rank} outside world {spec.world}")
        self.spec, self.rank, self.world, self.timeout_s = spec, rank, spec.world, timeout_s
        self._shm = shared_memory.SharedMemory(name=spec.name)
        words = self._shm.buf.cast("q")
        if words[0] != _MAGIC or words[_HDR_WORLD] != spec.world or words[_HDR_SLOT] != spec.slot_bytes:
            words.release()
            self._shm.close()
            raise ValueError(f"shared memory segment {spec.name} does not match {spec}")
        self._words = words
        self._flag = [(1 + r) * _Q for r in range(spec.world)]
        self._others = [self._flag[r] for r in range(spec.world) if r != rank]
        slots = np.ndarray((2, spec.world, spec.slot_bytes // 4), dtype=np.float32, buffer=self._shm.buf,
                           offset=spec.header_bytes)
        self._slots = slots
        self._slot_elems = spec.slot_bytes // 4
        self._seq = 0
        self.stats = WaitStats()

    def __call__(self, x: Any) -> Any:
        return self.all_reduce(x)

    def all_reduce(self, x: Any) -> Any:
        if isinstance(x, np.ndarray):
            if x.dtype != np.float32 or not x.flags.c_contiguous:
                raise TypeError("ShmAllReduce needs a C-contiguous float32 array")
            self.reduce_(x.reshape(-1))
            return x
        n = math.prod(x.shape)
        if str(x.dtype) != "paddle.float32" or not x.is_contiguous():
            # Rare (bf16/fp16 or a strided view): reduce a float32 copy, hand back the caller's dtype.
            y = x.astype("float32").contiguous()
            self.reduce_(np.asarray(_Raw(y.data_ptr(), n)))
            return y.astype(x.dtype)
        if n:
            self.reduce_(np.asarray(_Raw(x.data_ptr(), n)))
        return x

    def reduce_(self, flat: np.ndarray) -> None:
        """Sum a flat float32 array over the ranks, in place (chunked by the slot size)."""
        step = self._slot_elems
        for lo in range(0, flat.shape[0], step):
            chunk = flat[lo:lo + step]
            k = chunk.shape[0]
            self._seq += 1
            slots = self._slots[self._seq & 1]
            np.copyto(slots[self.rank, :k], chunk)
            self._words[self._flag[self.rank]] = self._seq
            self._wait(self._seq)
            if self.world == 1:
                continue  # the chunk already holds the sum
            np.add(slots[0, :k], slots[1, :k], out=chunk)
            for r in range(2, self.world):
                np.add(chunk, slots[r, :k], out=chunk)

    def _wait(self, seq: int) -> None:
        """Barrier on the sequence numbers: spin ~50 us, then sched_yield up to ~2 ms, then 50 us sleeps."""
        words = self._words
        pending = [i for i in self._others if words[i] < seq]
        st = self.stats
        st.calls += 1
        if not pending:
            st.spun += 1
            return
        t0 = time.perf_counter()
        now, phase = t0, 0
        while True:
            pending = [i for i in pending if words[i] < seq]
            if not pending:
                break
            now = time.perf_counter()
            waited = now - t0
            if waited < SPIN_S:
                continue
            if words[_HDR_ABORT]:
                raise AllReduceAborted("all-reduce aborted: a tensor-parallel rank died")
            if waited < YIELD_S:
                phase = max(phase, 1)
                os.sched_yield()
            elif waited < self.timeout_s:
                phase = 2
                time.sleep(50e-6)
            else:
                late = [i // _Q - 1 for i in pending]
                raise AllReduceAborted(f"all-reduce: ranks {late} did not arrive within {self.timeout_s} s")
        waited = time.perf_counter() - t0
        st.wait_s += waited
        st.max_wait_s = max(st.max_wait_s, waited)
        if phase == 0:
            st.spun += 1
        elif phase == 1:
            st.yielded += 1
        else:
            st.slept += 1

    def close(self) -> None:
        self._slots = None  # type: ignore[assignment]
        self._words.release()
        self._shm.close()


class NcclAllReduce:
    """GPU ranks: the same call, backed by paddle.distributed (NCCL); `dist_env.init_distributed` first."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world

    def __call__(self, x: Any) -> Any:
        return self.all_reduce(x)

    def all_reduce(self, x: Any) -> Any:
        import paddle.distributed as dist  # only GPU ranks get here

        dist.all_reduce(x)  # in place, SUM
        return x

    def close(self) -> None:
        pass
