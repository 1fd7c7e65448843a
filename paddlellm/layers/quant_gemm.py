"""Quantized linear layers: `--quantization wint8` and `wint4`, weights in blocks of 32 along K with a scale
d and minimum m per (output column, block), W ~ q d + m; activations quantized per (row, block) on the fly,
integer dot products within a block, fp32 across blocks.

- wint8: q u8 (256 levels; a GGUF Q8_0 block exactly, q = q8 + 128, m = -128 d), activations int16.
- wint4: q 4-bit (GGUF Q4_1's math: d and m are fp16 values), activations int8; the LM head stays wint8.
The math (the native kernel, paddlellm/native/quant_gemm.c, and the Paddle reference compute it alike; the
tests check the kernel bit for bit against NumPy):
    at load, per row n and block b:  lo, hi = min, max;  d = (hi - lo) / L;  m = lo
                                     (wint4: d, m rounded to fp16, unless that overflows)
                                     q = clip(rint((W - m) * (1 / d)), 0, L)                 (L = 255 or 15)
    per call, per row and block:     a = amax / QX;  Xq = clip(rint(X * (QX / amax)), -QX, QX);
                                     s = float(sum Xq) * a                      (QX = 32767 or 127)
    acc = 0; for each block b in order: acc = acc + (float(sum_{k in b} Xq q) * a) * d;  acc = acc + s * m
    Y = acc (+ bias)
- `Int8Gemm` / `Int4Gemm`: the native kernels of the loaded ISA; a quarter / an eighth of fp32's weight bytes,
  which is what a decode step waits for. The packed panels keep each block's d and m beside its weights, as
  fp16 when every value is one (GGUF blocks as stored, wint4), else fp32 (wint8 re-quantized).
- `PaddleInt8Gemm` / `PaddleInt4Gemm`: the same arithmetic in Paddle ops (block sums exact in float64), the
  reference path for `--cpu-kernels paddle` and for GPUs without a weight-only kernel here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import paddle

from paddlellm.layers.gemm import (
    LINEAR_W4,
    LINEAR_W8,
    GemmWeight,
    LinearSpec,
    NativeLinear,
    padded_param,
    to_param,
)
from paddlellm.layers.host_tensor import host_tensor
from paddlellm.layers.thread_team import ThreadTeam, team_of
from paddlellm.native.build import NativeLibrary
from paddlellm.quant_blocks import BlockQuantized

BLOCK = 32  # k per scale: quant_gemm_w8_block() of the library, GGUF's block size
X8, X16 = 127.0, 32767.0  # activation range: wint4 (int8), wint8 (int16)
Q8_LEVELS, Q4_LEVELS = 255, 15


def quantize_activations(a: np.ndarray, qmax: float, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Per (row, block of `block` columns) symmetric: (q int64 [rows, KB * block], scale float32 [rows, KB]),
    K zero-padded to KB * block; a zero block gets scale 0."""
    rows, k = a.shape
    kb = -(-k // block)
    padded = np.zeros((rows, kb * block), np.float32)
    padded[:, :k] = a
    blocks = padded.reshape(rows, kb, block)
    amax = np.abs(blocks).max(axis=2) if k else np.zeros((rows, kb), np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(qmax) / amax, np.float32(0)).astype(np.float32)
    q = np.clip(np.rint(blocks * inv[:, :, None]), -qmax, qmax).astype(np.int64)
    return q.reshape(rows, kb * block), (amax / np.float32(qmax)).astype(np.float32)


def _fp16_if_finite(d: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """d and lo rounded to fp16 (nearest even) and widened back, unless a value would not stay finite."""
    with np.errstate(over="ignore"):
        d16, lo16 = d.astype(np.float16).astype(np.float32), lo.astype(np.float16).astype(np.float32)
    return (d16, lo16) if np.isfinite(d16).all() and np.isfinite(lo16).all() else (d, lo)


def quantize_asym(
    w: np.ndarray, levels: int, block: int = BLOCK, half: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (row, block): d = (max - min) / levels, m = min, q = clip(rint((w - m) * (1 / d)), 0, levels), so
    w ~ q * d + m. `half`: d and m are rounded to fp16 first (GGUF Q4_1's, and q is computed with the rounded
    values; kept fp32 if fp16 would overflow). Returns (q uint8 [rows, KB * block], d float32 [rows, KB],
    m float32 [rows, KB]); K zero-padded (a padded tail's weights multiply zero activations)."""
    rows, k = w.shape
    kb = -(-k // block)
    padded = np.zeros((rows, kb * block), np.float32)
    padded[:, :k] = w
    blocks = padded.reshape(rows, kb, block)
    lo, hi = blocks.min(axis=2), blocks.max(axis=2)
    d = ((hi - lo) / np.float32(levels)).astype(np.float32)
    lo = lo.astype(np.float32)
    if half:
        d, lo = _fp16_if_finite(d, lo)
    with np.errstate(divide="ignore"):
        inv = np.where(d > 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    q = np.clip(np.rint((blocks - lo[:, :, None]) * inv[:, :, None]), 0, levels).astype(np.uint8)
    return q.reshape(rows, kb * block), d, lo


def quantize_q4(w: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GGUF Q4_1's math: 16 levels per block, d and m fp16 values."""
    return quantize_asym(w, Q4_LEVELS, block, half=True)


def quantize_u8(w: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """wint8: 256 levels per block."""
    return quantize_asym(w, Q8_LEVELS, block)


def q8_0_as_u8(blocks: BlockQuantized) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A GGUF Q8_0 tensor (q8 int8, d) in wint8's form, exactly: q = q8 + 128, m = -128 d."""
    q = (blocks.q.astype(np.int16) + 128).astype(np.uint8)
    return q, blocks.d, (blocks.d * np.float32(-128)).astype(np.float32)


QGEMM_HALF_TABLES = 1  # paddlellm/native/team.h: the per-block d and m are fp16


def tables_fp16(d: np.ndarray, mn: np.ndarray) -> bool:
    """True when every d and m is exactly an fp16 value (a GGUF block's, or quantize_q4's): the kernels then
    read them as fp16, half the table bytes, the same values."""
    with np.errstate(over="ignore"):
        return bool(
            np.array_equal(d.astype(np.float16).astype(np.float32), d)
            and np.array_equal(mn.astype(np.float16).astype(np.float32), mn)
        )


def _pack_blocks(units: np.ndarray, d: np.ndarray, mn: np.ndarray, nr: int, half: bool) -> np.ndarray:
    """units [N, KB, U] (a column's weights of each block, U words) -> uint8 panels: per panel of nr columns
    and block, [U][nr] words, then the block's nr d and nr m (fp16 when `half`, else fp32); columns
    zero-padded."""
    n, kb, _ = units.shape
    panels = -(-n // nr)
    pad = panels * nr - n

    def lanes(a: np.ndarray) -> np.ndarray:  # [N, KB, ...] -> [P, KB, ..., nr]
        a = np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)]) if pad else a
        a = a.reshape(panels, nr, *a.shape[1:])
        return np.moveaxis(a, 1, -1)

    tdt = np.float16 if half else np.float32
    parts = [lanes(units), lanes(d.astype(tdt)), lanes(mn.astype(tdt))]
    flat = [np.ascontiguousarray(p).view(np.uint8).reshape(panels, kb, -1) for p in parts]
    return np.ascontiguousarray(np.concatenate(flat, axis=2)).reshape(-1)


def pack_u8_pair_panels(q: np.ndarray, d: np.ndarray, mn: np.ndarray, nr: int, half: bool) -> np.ndarray:
    """wint8: [N, KB * 32] u8 -> uint8 panels of [KB][16 pairs][nr] int16 words (lane j of pair p: column
    j's k = 2p in the low byte, 2p + 1 in the high byte), each block followed by its d and m rows."""
    n = q.shape[0]
    pairs = np.ascontiguousarray(q, np.uint8).view(np.int16).reshape(n, d.shape[1], BLOCK // 2)
    return _pack_blocks(pairs, d, mn, nr, half)


def pack_q4_panels(q: np.ndarray, d: np.ndarray, mn: np.ndarray, nr: int, half: bool) -> np.ndarray:
    """wint4: [N, KB * 32] nibbles -> uint8 panels of [KB][4 octets][nr] int32 lanes (byte i of lane j of
    octet o: column j's k = 8o + i in the low half, 8o + 4 + i in the high half), each block followed by its
    d and m rows."""
    n = q.shape[0]
    halves = np.ascontiguousarray(q, np.uint8).reshape(n, -1, 2, 4)  # [N, octets, half, i]
    octets = np.ascontiguousarray(halves[:, :, 0, :] | (halves[:, :, 1, :] << 4))  # [N, octets, 4] bytes
    lanes = octets.view(np.int32).reshape(n, d.shape[1], BLOCK // 8)
    return _pack_blocks(lanes, d, mn, nr, half)


class _Int8Weight(NativeLinear):
    KIND = LINEAR_W8

    def __init__(
        self,
        native: NativeLibrary,
        team: ThreadTeam,
        w: np.ndarray,
        bias: np.ndarray | None,
        blocks: BlockQuantized | None = None,
    ) -> None:
        self.out_features, self.in_features = w.shape
        nr = native.int8_panel_width
        # A Q8_0 tensor runs as the file stores it (no second rounding); anything else is quantized here.
        self.as_stored = blocks is not None and blocks.kind == "q8_0"
        q, d, mn = q8_0_as_u8(blocks) if blocks is not None and self.as_stored else quantize_u8(w)
        # A Q8_0 block's d and m = -128 d are fp16 values: read as such (the head: 10 % fewer bytes).
        half = tables_fp16(d, mn)
        self._keep(native.lib.quant_gemm_w8, team, pack_u8_pair_panels(q, d, mn, nr, half), half, bias, nr)

    def _keep(
        self, fn: Any, team: ThreadTeam, packed: np.ndarray, half: bool, bias: np.ndarray | None, nr: int
    ) -> None:
        """Hold the packed panels (the weights and their per-block tables)."""
        self._fn, self._team = fn, team
        self.flags = QGEMM_HALF_TABLES if half else 0
        self.packed = host_tensor(packed)
        self.packed.stop_gradient = True
        panels = -(-self.out_features // nr)
        self.bias = padded_param(bias, panels * nr) if bias is not None else None
        # The tensors live as long as this object, so their addresses can be taken once.
        self._ptr = self.packed.data_ptr()
        self._bias_ptr = self.bias.data_ptr() if self.bias is not None else None

    def _run(self, x: int, m: int, k: int, y: int, n: int) -> int | None:
        return self._fn(x, m, k, k, self._ptr, self.flags, n, self._bias_ptr, y, n, self._team.size)

    def spec(self) -> LinearSpec:
        k, n = self.in_features, self.out_features
        return LinearSpec(self.KIND, k, n, self._ptr, bias=self._bias_ptr or 0, flags=self.flags)


class Int8Gemm:
    def __init__(self, native: NativeLibrary, team: int | ThreadTeam) -> None:
        self.native, self.team = native, team_of(team)
        self.name = f"packed-wint8-{native.isa}"

    takes_blocks = True

    def weight(
        self, w: np.ndarray, bias: np.ndarray | None = None, blocks: BlockQuantized | None = None
    ) -> GemmWeight:
        return _Int8Weight(self.native, self.team, w, bias, blocks)

    def head_weight(
        self, rows: np.ndarray, table: paddle.Tensor | None, blocks: BlockQuantized | None = None
    ) -> GemmWeight:
        del table  # the int8 copy is the only one the head needs
        return _Int8Weight(self.native, self.team, rows, None, blocks)


class _Int4Weight(_Int8Weight):
    KIND = LINEAR_W4

    def __init__(
        self,
        native: NativeLibrary,
        team: ThreadTeam,
        w: np.ndarray,
        bias: np.ndarray | None,
        blocks: BlockQuantized | None = None,
    ) -> None:
        self.out_features, self.in_features = w.shape
        nr = native.int8_panel_width
        # Q4_0 / Q4_1 tensors run as the file stores them (Q4_0 as Q4_1 with m = -8 d, exact).
        self.as_stored = blocks is not None and blocks.kind in ("q4_0", "q4_1") and blocks.m is not None
        if self.as_stored:
            q, d, mn = blocks.q, blocks.d, blocks.m  # type: ignore[union-attr]
        else:
            q, d, mn = quantize_q4(w)
        # fp16 tables as GGUF stores them; fp32 only where a value is not one (e.g. blocks scaled by a factor
        # that is not a power of two).
        half = tables_fp16(d, mn)
        self._keep(native.lib.quant_gemm_w4, team, pack_q4_panels(q, d, mn, nr, half), half, bias, nr)


class Int4Gemm(Int8Gemm):
    def __init__(self, native: NativeLibrary, team: int | ThreadTeam) -> None:
        super().__init__(native, team)
        self.name = f"packed-wint4-{native.isa}"

    def weight(
        self, w: np.ndarray, bias: np.ndarray | None = None, blocks: BlockQuantized | None = None
    ) -> GemmWeight:
        return _Int4Weight(self.native, self.team, w, bias, blocks)

    def head_weight(
        self, rows: np.ndarray, table: paddle.Tensor | None, blocks: BlockQuantized | None = None
    ) -> GemmWeight:
        """The LM head stays int8 (as llama.cpp keeps its output matrix at 6-8 bits): every logit comes from
        it, and 4 bits there cost more quality than the 4 saved bits per weight save time. A Q8_0 head (the
        default model's tied embedding) runs as stored."""
        del table
        return _Int8Weight(self.native, self.team, rows, None, blocks)


def _blocks_t(v: np.ndarray, kb: int, dtype: type) -> paddle.Tensor:
    """[N, KB * BLOCK] -> [KB, BLOCK, N] (one batched matmul per call); [N, KB] -> [KB, 1, N]."""
    n = v.shape[0]
    shaped = v.reshape(n, kb, -1).transpose(1, 2, 0)
    t = host_tensor(np.ascontiguousarray(shaped, dtype))
    t.stop_gradient = True
    return t


def _quantized_activations(x: paddle.Tensor, kb: int, qmax: float) -> tuple[paddle.Tensor, paddle.Tensor]:
    """x [..., K] -> (Xq [KB, M, BLOCK] float64 integers, a [KB, M, 1] float32): per row and block, as the
    kernel (paddle.round rounds ties half away from zero, the kernel half to even)."""
    k = x.shape[-1]
    m = int(np.prod(x.shape[:-1]))
    x2 = paddle.nn.functional.pad(x.reshape([m, k]).astype("float32"), [0, kb * BLOCK - k])
    xb = x2.reshape([m, kb, BLOCK]).transpose([1, 0, 2])
    amax = xb.abs().max(axis=2, keepdim=True)
    inv = paddle.where(amax > 0, qmax / amax, paddle.zeros_like(amax))
    return paddle.clip(paddle.round(xb * inv), -qmax, qmax).astype("float64"), amax / qmax


class _PaddleQuantWeight:
    """The same arithmetic in Paddle ops; block sums of integer products are exact in float64."""

    LEVELS, QX = Q8_LEVELS, X16

    def __init__(self, w: np.ndarray, bias: np.ndarray | None) -> None:
        self.out_features = w.shape[0]
        q, d, mn = quantize_asym(w, self.LEVELS, half=self.LEVELS == Q4_LEVELS)
        self.kb = d.shape[1]
        self.wq, self.scale = _blocks_t(q, self.kb, np.float64), _blocks_t(d, self.kb, np.float32)
        self.minimum = _blocks_t(mn, self.kb, np.float32)
        self.bias = to_param(bias) if bias is not None else None

    def __call__(self, x: paddle.Tensor) -> paddle.Tensor:
        xq, a = _quantized_activations(x, self.kb, self.QX)
        sums = paddle.bmm(xq, self.wq).astype("float32")  # [KB, M, N]
        xsa = xq.sum(axis=2, keepdim=True).astype("float32") * a  # the block's activation sum, scaled
        terms = [(sums * a) * self.scale, xsa * self.minimum]
        y = None
        for b in range(self.kb):  # block order, each block's terms in order, as the kernel
            for t in terms:
                y = t[b] if y is None else y + t[b]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape([*x.shape[:-1], self.out_features])


class _PaddleInt4Weight(_PaddleQuantWeight):
    LEVELS, QX = Q4_LEVELS, X8


class PaddleInt8Gemm:
    """`--quantization wint8` (and `wint4`, `PaddleInt4Gemm`) in Paddle ops: the reference path for
    `--cpu-kernels paddle` and GPUs. The fp32 weights it quantizes are a GGUF's blocks exactly dequantized,
    so re-quantizing them gives the stored values back up to rounding."""

    name = "paddle-wint8"
    takes_blocks = False

    def weight(
        self, w: np.ndarray, bias: np.ndarray | None = None, blocks: BlockQuantized | None = None
    ) -> GemmWeight:
        return _PaddleQuantWeight(w, bias)

    def head_weight(
        self, rows: np.ndarray, table: paddle.Tensor | None, blocks: BlockQuantized | None = None
    ) -> GemmWeight:
        del table
        return _PaddleQuantWeight(rows, None)


class PaddleInt4Gemm(PaddleInt8Gemm):
    name = "paddle-wint4"

    def weight(
        self, w: np.ndarray, bias: np.ndarray | None = None, blocks: BlockQuantized | None = None
    ) -> GemmWeight:
        return _PaddleInt4Weight(w, bias)
