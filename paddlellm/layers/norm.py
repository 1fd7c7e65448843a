"""RMSNorm through Paddle's fused CPU kernel, which also folds the residual add into the same op."""

from __future__ import annotations

import numpy as np
import paddle
from paddle.incubate.nn.functional import fused_rms_norm

from paddlellm.layers.gemm import to_param


class RMSNorm:
    def __init__(self, weight: np.ndarray, eps: float) -> None:
        self.weight = to_param(weight)
        self.eps = eps

    def __call__(
        self, x: paddle.Tensor, residual: paddle.Tensor | None = None
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        """(norm(x + residual), x + residual); normalises over the last axis."""
        axis = x.ndim - 1
        if residual is None:
            return fused_rms_norm(x, self.weight, None, self.eps, axis)[0], x
        out, summed = fused_rms_norm(x, self.weight, None, self.eps, axis, residual=residual)
        return out, summed
