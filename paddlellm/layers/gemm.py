"""How a layer multiplies activations by a weight: `Gemm.weight(w, bias)` prepares an HF `[out, in]` matrix
once at load; the returned `GemmWeight(x)` computes `x @ w.T (+ bias)` for x `[..., in]`.

- `PaddleGemm`: the weight stored `[in, out]` for `paddle.matmul` (GPU, `--cpu-kernels paddle`, and CPUs
  with no native kernel ISA).
- `PackedGemm`: the weight packed into column panels (their width is the loaded library's, 32 on AVX-512 and
  24 on AVX2) for the project's kernel (paddlellm/native/packed_sgemm.c): at decode batch sizes 2-4x faster
  than eager Paddle's MKL here, bias fused, and a row's result independent of the batch around it. Only the
  packed copy is kept. With `bf16=True` (`--dtype bfloat16`) the panels hold bf16 weight pairs (`vdpbf16ps`
  on AVX512_BF16, widened to fp32 in registers elsewhere): half the bytes, activations rounded to bf16 per
  call, fp32 accumulation.
`layers/kernels.py` picks one from `EngineConfig.cpu_kernels`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import paddle
from paddle import _C_ops

from paddlellm.layers.host_tensor import host_tensor
from paddlellm.layers.thread_team import ThreadTeam, team_of
from paddlellm.native.build import NativeLibrary
from paddlellm.quant_blocks import BlockQuantized


def to_param(arr: np.ndarray) -> paddle.Tensor:
    t = host_tensor(np.ascontiguousarray(arr, dtype=np.float32))
    t.stop_gradient = True
    return t


class GemmWeight(Protocol):
    out_features: int

    def __call__(self, x: paddle.Tensor) -> paddle.Tensor: ...


class Gemm(Protocol):
    name: str
    # True: the layers pass `blocks` (the weight as a GGUF file stored it) when the checkpoint has them.
    takes_blocks: bool

    def weight(
        self, w: np.ndarray, bias: np.ndarray | None = None, blocks: BlockQuantized | None = None
    ) -> GemmWeight: ...

    def head_weight(
        self, rows: np.ndarray, table: paddle.Tensor | None, blocks: BlockQuantized | None = None
    ) -> GemmWeight:
        """The LM head's [V, hidden] rows; `table` is the tied embedding's tensor when it holds them."""
        ...


class _DenseWeight:
    def __init__(self, w: np.ndarray, bias: np.ndarray | None) -> None:
        self.out_features = w.shape[0]
        self.w = to_param(w.T)  # [in, out]: measured fastest for memory-bound small batches on MKL
        self.bias = to_param(bias) if bias is not None else None

    def __call__(self, x: paddle.Tensor) -> paddle.Tensor:
        y = paddle.matmul(x, self.w)
        return y + self.bias if self.bias is not None else y


class _ChunkedHeadWeight:
    """The LM head on MKL: vocab chunks, by the layout that is fastest for the batch size (single-thread CPU
    time, 576 x 49,152 head): batch 1: x @ W 4.9 ms, x @ E^T 9.4; batch 8: 8192-column chunks of x @ W 15.0,
    whole x @ E^T 20.8, whole x @ W 30.1; batch 32: 2048-row chunks of x @ E^T 27.7, whole 34.3, x @ W 63.6.
    The E^T chunks are row views of the [V, hidden] table (the embedding itself when tied), so only the
    [hidden, V] copy costs memory."""

    NT_MIN_ROWS = 12
    NN_CHUNK = 8192
    NT_CHUNK = 2048

    def __init__(self, rows: np.ndarray, table: paddle.Tensor | None) -> None:
        n = self.out_features = rows.shape[0]
        self.nn_chunks = [to_param(rows[i : i + self.NN_CHUNK].T) for i in range(0, n, self.NN_CHUNK)]
        shared = table is not None and list(table.shape) == list(rows.shape)
        full = table if shared and table is not None else to_param(rows)  # [V, hidden]
        self.nt_chunks = [full[i : i + self.NT_CHUNK] for i in range(0, n, self.NT_CHUNK)]

    def __call__(self, x: paddle.Tensor) -> paddle.Tensor:
        if x.shape[0] >= self.NT_MIN_ROWS:
            parts = [paddle.matmul(x, c, transpose_y=True) for c in self.nt_chunks]
        else:
            parts = [paddle.matmul(x, c) for c in self.nn_chunks]
        return parts[0] if len(parts) == 1 else paddle.concat(parts, axis=1)


class PaddleGemm:
    name = "paddle"
    takes_blocks = False

    def weight(
        self, w: np.ndarray, bias: np.ndarray | None = None, blocks: BlockQuantized | None = None
    ) -> GemmWeight:
        return _DenseWeight(w, bias)

    def head_weight(
        self, rows: np.ndarray, table: paddle.Tensor | None, blocks: BlockQuantized | None = None
    ) -> GemmWeight:
        return _ChunkedHeadWeight(rows, table)


def pack_panels(w: np.ndarray, nr: int) -> np.ndarray:
    """[out, in] -> [ceil(out / nr), in, nr], zero-padded: panel p holds output columns [nr*p, nr*p + nr).
    Any element type: the fp32 weights here, and the quantized lanes and per-block tables of quant_gemm.py."""
    n, k = w.shape
    panels = -(-n // nr)
    padded = np.zeros((panels * nr, k), w.dtype)
    padded[:n] = w
    return np.ascontiguousarray(padded.reshape(panels, nr, k).transpose(0, 2, 1))


def to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), round to nearest even (the kernel rounds activations alike)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def pack_panels_bf16(w: np.ndarray, nr: int) -> np.ndarray:
    """[out, in] -> [ceil(out / nr), ceil(in / 2), nr] uint32: lane j of k-pair q holds column j's bf16
    weights for inputs 2q (low half) and 2q + 1 (high half); zero-padded."""
    n, k = w.shape
    padded = np.zeros((n, k + k % 2), np.float32)
    padded[:, :k] = w
    panels = pack_panels(padded, nr)  # [P, K, nr] float32
    bits = to_bf16_bits(panels).astype(np.uint32)
    pairs = bits.reshape(panels.shape[0], -1, 2, nr)  # [P, K/2, 2, nr]
    return np.ascontiguousarray(pairs[:, :, 0, :] | (pairs[:, :, 1, :] << 16))


@dataclass(frozen=True)
class LinearSpec:
    """What the fused decode pass (paddlellm/native/decode_step.c, `pl_linear`) needs to run a packed
    weight: its kind (`LINEAR_*` there), shape and the addresses of its packed data, tables and padded bias
    (0: none)."""

    kind: int
    k: int
    n: int
    w: int
    t1: int = 0
    t2: int = 0
    bias: int = 0
    flags: int = 0  # wint8 / wint4: QGEMM_* of paddlellm/native/team.h


LINEAR_F32, LINEAR_BF16, LINEAR_W8, LINEAR_W4 = 0, 1, 2, 3


class NativeLinear:
    """A weight one of the native GEMMs multiplies: `__call__` checks and reshapes x, allocates y and calls
    `_run(x_ptr, m, k, y_ptr, n)`, which returns non-zero when the kernel could not allocate its scratch;
    `spec()` describes it to the fused decode pass."""

    out_features: int
    in_features: int
    _place = paddle.CPUPlace()

    def spec(self) -> LinearSpec:
        raise NotImplementedError

    def _run(self, x: int, m: int, k: int, y: int, n: int) -> int | None:
        raise NotImplementedError

    def __call__(self, x: paddle.Tensor) -> paddle.Tensor:
        # Hot path (~150 calls per decode step): no dtype check (every activation here is float32), and
        # _C_ops.empty, which costs a third of paddle.empty's Python wrapper.
        shape = x.shape
        if len(shape) != 2:
            x = x.reshape([-1, shape[-1]])
        if not x.is_contiguous():
            x = x.contiguous()
        m, k = x.shape
        if k != self.in_features:
            raise ValueError(f"{type(self).__name__}: input has {k} features, the weight {self.in_features}")
        n = self.out_features
        y = _C_ops.empty([m, n], paddle.float32, self._place)
        if m and self._run(x.data_ptr(), m, k, y.data_ptr(), n):
            raise MemoryError(f"{type(self).__name__}: no memory for the kernel's copy of the activations")
        return y if len(shape) == 2 else y.reshape([*shape[:-1], n])


def padded_param(v: np.ndarray, size: int) -> paddle.Tensor:
    """A float32 vector zero-padded to `size` (a whole number of panels)."""
    out = np.zeros(size, np.float32)
    out[: v.shape[0]] = v
    return to_param(out)


class _PackedWeight(NativeLinear):
    def __init__(
        self,
        native: NativeLibrary,
        team: ThreadTeam,
        w: np.ndarray,
        bias: np.ndarray | None,
        bf16: bool = False,
    ) -> None:
        self.out_features, self.in_features = w.shape
        self._fn = native.lib.packed_sgemm_bf16 if bf16 else native.lib.packed_sgemm
        self._kind = LINEAR_BF16 if bf16 else LINEAR_F32
        self._team = team
        nr = native.panel_width
        if bf16:
            packed = host_tensor(pack_panels_bf16(w, nr).view(np.int32))  # paddle has no uint32
            packed.stop_gradient = True
            self.packed = packed
        else:
            self.packed = to_param(pack_panels(np.asarray(w, np.float32), nr))
        self.bias = padded_param(bias, self.packed.shape[0] * nr) if bias is not None else None
        # The tensors above live as long as this object, so their addresses can be taken once.
        self._packed_ptr = self.packed.data_ptr()
        self._bias_ptr = self.bias.data_ptr() if self.bias is not None else None

    def _run(self, x: int, m: int, k: int, y: int, n: int) -> int | None:
        return self._fn(x, m, k, k, self._packed_ptr, n, self._bias_ptr, y, n, self._team.size)  # fp32: None

    def spec(self) -> LinearSpec:
        n, k = self.out_features, self.in_features
        return LinearSpec(self._kind, k, n, self._packed_ptr, bias=self._bias_ptr or 0)


class PackedGemm:
    def __init__(self, native: NativeLibrary, team: int | ThreadTeam, bf16: bool = False) -> None:
        self.native, self.team, self.bf16 = native, team_of(team), bf16
        self.name = f"packed-{'bf16' if bf16 else 'fp32'}-{native.isa}"

    takes_blocks = False

    def weight(
        self, w: np.ndarray, bias: np.ndarray | None = None, blocks: BlockQuantized | None = None
    ) -> GemmWeight:
        return _PackedWeight(self.native, self.team, w, bias, self.bf16)

    def head_weight(
        self, rows: np.ndarray, table: paddle.Tensor | None, blocks: BlockQuantized | None = None
    ) -> GemmWeight:
        del table  # the packed copy is the only one the head needs
        return self.weight(rows)
