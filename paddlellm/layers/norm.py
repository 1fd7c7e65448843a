"""RMSNorm with the residual add folded in: `norm(x, residual) -> (norm(x + residual), x + residual)`.

Three implementations of the same math, one chosen per model by `layers/kernels.py` from the CPU description:
- `NativeRMSNorm`: the project's C kernel (paddlellm/native/rms_norm.c), on every CPU with a native ISA;
- `FusedRMSNorm`: Paddle's `fused_rms_norm`, on GPU and on CPUs with AVX-512 (its CPU kernel is compiled for
  AVX-512 with no runtime check: SIGILL on AVX2-only CPUs);
- `PaddleRMSNorm`: plain Paddle ops, which run on any CPU.
Each is built as `impl(weight, eps)`; a `NormFactory` is any such callable.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import paddle
from paddle import _C_ops

from paddlellm.layers.gemm import to_param
from paddlellm.layers.thread_team import ThreadTeam, team_of
from paddlellm.native.build import NativeLibrary


class RMSNorm(Protocol):
    def __call__(
        self, x: paddle.Tensor, residual: paddle.Tensor | None = None
    ) -> tuple[paddle.Tensor, paddle.Tensor]: ...


class NormFactory(Protocol):
    def __call__(self, weight: np.ndarray, eps: float) -> RMSNorm: ...


class _NormWeight:
    def __init__(self, weight: np.ndarray, eps: float) -> None:
        self.weight = to_param(weight)
        self.eps = eps


class PaddleRMSNorm(_NormWeight):
    """HF's order: s = x + residual; s * rsqrt(mean(s^2) + eps), then times the weight."""

    def __call__(
        self, x: paddle.Tensor, residual: paddle.Tensor | None = None
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        s = x if residual is None else x + residual
        var = paddle.mean(paddle.square(s), axis=-1, keepdim=True)
        return s * paddle.rsqrt(var + self.eps) * self.weight, s


class FusedRMSNorm(_NormWeight):
    def __init__(self, weight: np.ndarray, eps: float) -> None:
        super().__init__(weight, eps)
        from paddle.incubate.nn.functional import fused_rms_norm  # imported only where it may run

        self._fused = fused_rms_norm

    def __call__(
        self, x: paddle.Tensor, residual: paddle.Tensor | None = None
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        axis = x.ndim - 1
        if residual is None:
            return self._fused(x, self.weight, None, self.eps, axis)[0], x
        out, summed = self._fused(x, self.weight, None, self.eps, axis, residual=residual)
        return out, summed


class NativeRMSNorm(_NormWeight):
    def __init__(self, native: NativeLibrary, team: ThreadTeam, weight: np.ndarray, eps: float) -> None:
        super().__init__(weight, eps)
        self._fn = native.lib.rms_norm
        self._team = team
        self._place = paddle.CPUPlace()
        self._w_ptr = self.weight.data_ptr()  # lives as long as this object
        self._n = int(weight.shape[0])

    @property
    def weight_address(self) -> int:
        """Where the fp32 weight lives (the fused decode pass reads it)."""
        return self._w_ptr

    def __call__(
        self, x: paddle.Tensor, residual: paddle.Tensor | None = None
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        # Hot path (two calls per layer per step): _C_ops.empty, no dtype checks (activations are float32).
        if not x.is_contiguous():
            x = x.contiguous()
        shape = x.shape
        n = shape[-1]
        if n != self._n:
            raise ValueError(f"rms_norm: input has {n} features, the weight {self._n}")
        rows = 1
        for dim in shape[:-1]:  # not x.size: Paddle computes it through numpy (~0.1 ms a call)
            rows *= dim
        out = _C_ops.empty(shape, paddle.float32, self._place)
        if residual is None:
            if rows:
                ptrs = (x.data_ptr(), None, self._w_ptr, self.eps, out.data_ptr(), None)
                self._fn(*ptrs, rows, n, self._team.size)
            return out, x
        if not residual.is_contiguous():
            residual = residual.contiguous()
        if residual.shape != shape:
            raise ValueError(f"rms_norm: residual {residual.shape} != input {shape}")
        summed = _C_ops.empty(shape, paddle.float32, self._place)
        if rows:
            self._fn(
                x.data_ptr(), residual.data_ptr(), self._w_ptr, self.eps, out.data_ptr(), summed.data_ptr(),
                rows, n, self._team.size,
            )
        return out, summed


class NativeNorms:
    """A NormFactory for the native kernel of one loaded library."""

    def __init__(self, native: NativeLibrary, team: int | ThreadTeam) -> None:
        self.native, self.team = native, team_of(team)

    def __call__(self, weight: np.ndarray, eps: float) -> RMSNorm:
        return NativeRMSNorm(self.native, self.team, weight, eps)
