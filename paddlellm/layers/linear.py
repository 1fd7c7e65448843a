"""Tensor-parallel linear layers that load only their rank's shard of HF `[out, in]` weights.

- ColumnParallelLinear splits output features: each fused part (q|k|v, gate|up) contributes its own slice,
  so rank r holds [q_r | k_r | v_r]; no communication.
- RowParallelLinear splits input features; the partial products are summed by the injected all-reduce, and
  the bias is added once, after the reduction.
With world == 1 both are one matmul (+ bias), nothing else.

Weights are stored as [in, out] (x @ W): measured fastest for memory-bound small batches on this CPU's MKL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import paddle

from paddlellm.errors import ConfigError
from paddlellm.worker.weights import WeightReader

AllReduce = Callable[[paddle.Tensor], paddle.Tensor]
# Applied to each part's (weight rows [out_local, in], bias [out_local] or None) before fusing.
PartTransform = Callable[[str, np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray | None]]


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1

    def split(self, n: int, what: str) -> tuple[int, int]:
        """This rank's [start, end) of n items that must divide evenly across ranks."""
        if n % self.world:
            raise ConfigError(f"tensor_parallel_size={self.world} does not divide {what}={n}")
        size = n // self.world
        return self.rank * size, (self.rank + 1) * size


def to_param(arr: np.ndarray) -> paddle.Tensor:
    t = paddle.to_tensor(np.ascontiguousarray(arr, dtype=np.float32))
    t.stop_gradient = True
    return t


class ColumnParallelLinear:
    def __init__(self, weight: np.ndarray, bias: np.ndarray | None) -> None:
        # weight: [out_local, in] as in HF files; stored transposed for x @ W.
        self.out_features = weight.shape[0]
        self.weight = to_param(weight.T)
        self.bias = to_param(bias) if bias is not None else None

    @classmethod
    def load(
        cls,
        reader: WeightReader,
        parts: Sequence[tuple[str, int]],
        shard: Shard,
        transform: PartTransform | None = None,
    ) -> ColumnParallelLinear:
        """parts: (tensor name without '.weight', unit) where unit = rows per shardable group (head_dim
        for attention projections, 1 for MLP); a bias is loaded when the checkpoint has one."""
        ws: list[np.ndarray] = []
        bs: list[np.ndarray | None] = []
        for name, unit in parts:
            total = reader.shape(f"{name}.weight")[0]
            lo, hi = shard.split(total // unit, f"{name} groups")
            rows = (lo * unit, hi * unit)
            w = reader.get(f"{name}.weight", rows=rows)
            b = reader.get(f"{name}.bias", rows=rows) if f"{name}.bias" in reader else None
            if transform is not None:
                w, b = transform(name, w, b)
            ws.append(w)
            bs.append(b)
        bias = None
        if any(b is not None for b in bs):
            zero = [np.zeros(w.shape[0], np.float32) for w in ws]
            bias = np.concatenate([b if b is not None else z for z, b in zip(zero, bs, strict=True)])
        return cls(np.concatenate(ws, axis=0), bias)

    def __call__(self, x: paddle.Tensor) -> paddle.Tensor:
        y = paddle.matmul(x, self.weight)
        return y + self.bias if self.bias is not None else y


class RowParallelLinear:
    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, all_reduce: AllReduce | None) -> None:
        # weight: [out, in_local]
        self.weight = to_param(weight.T)
        self.bias = to_param(bias) if bias is not None else None
        self.all_reduce = all_reduce

    @classmethod
    def load(
        cls, reader: WeightReader, name: str, unit: int, shard: Shard, all_reduce: AllReduce | None
    ) -> RowParallelLinear:
        total = reader.shape(f"{name}.weight")[1]
        lo, hi = shard.split(total // unit, f"{name} input groups")
        w = reader.get(f"{name}.weight", cols=(lo * unit, hi * unit))
        b = reader.get(f"{name}.bias") if f"{name}.bias" in reader else None
        if shard.world > 1 and all_reduce is None:
            raise ConfigError("tensor parallelism needs an all_reduce callable")
        return cls(w, b, all_reduce if shard.world > 1 else None)

    def __call__(self, x: paddle.Tensor) -> paddle.Tensor:
        y = paddle.matmul(x, self.weight)
        if self.all_reduce is not None:
            y = self.all_reduce(y)
        return y + self.bias if self.bias is not None else y
