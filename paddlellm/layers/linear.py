"""Tensor-parallel linear layers that load only their rank's shard of HF `[out, in]` weights.

- ColumnParallelLinear splits output features: each fused part (q|k|v, gate|up) contributes its own slice,
  so rank r holds [q_r | k_r | v_r]; no communication.
- RowParallelLinear splits input features; the partial products are summed by the injected all-reduce, and
  the bias is added once, after the reduction.
With world == 1 both are one GEMM (+ bias), nothing else. How the GEMM runs (Paddle's matmul or the packed
AVX-512 kernel) is the injected `Gemm`'s business (layers/gemm.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import paddle

from paddlellm.errors import ConfigError
from paddlellm.layers.gemm import Gemm, PaddleGemm, to_param
from paddlellm.quant_blocks import BlockQuantized
from paddlellm.weight_reader import WeightReader

AllReduce = Callable[[paddle.Tensor], paddle.Tensor]
# Applied to each part's (weight rows [out_local, in], bias [out_local] or None) before fusing.
PartTransform = Callable[[str, np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray | None]]
# The same change for a part kept as a GGUF file stored it (row order, a scale folded into d and m).
BlockTransform = Callable[[str, "BlockQuantized"], "BlockQuantized"]


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


def wants_blocks(gemm: Gemm | None) -> bool:
    return bool(getattr(gemm, "takes_blocks", False))


class ColumnParallelLinear:
    def __init__(
        self,
        weight: np.ndarray,
        bias: np.ndarray | None,
        gemm: Gemm | None = None,
        blocks: BlockQuantized | None = None,
    ) -> None:
        # weight: [out_local, in] as in HF files; blocks: the same rows as a GGUF file stored them, if known
        self.out_features = weight.shape[0]
        self.gemm = (gemm or PaddleGemm()).weight(weight, bias, blocks)

    @classmethod
    def load(
        cls,
        reader: WeightReader,
        parts: Sequence[tuple[str, int]],
        shard: Shard,
        transform: PartTransform | None = None,
        gemm: Gemm | None = None,
        block_transform: BlockTransform | None = None,
    ) -> ColumnParallelLinear:
        """parts: (tensor name without '.weight', unit) where unit = rows per shardable group (head_dim
        for attention projections, 1 for MLP); a bias is loaded when the checkpoint has one."""
        ws: list[np.ndarray] = []
        bs: list[np.ndarray | None] = []
        qs: list[BlockQuantized | None] = []
        for name, unit in parts:
            total = reader.shape(f"{name}.weight")[0]
            lo, hi = shard.split(total // unit, f"{name} groups")
            rows = (lo * unit, hi * unit)
            w = reader.get(f"{name}.weight", rows=rows)
            stored = reader.blocks(f"{name}.weight") if wants_blocks(gemm) else None
            if stored is not None and transform is not None:  # a transform needs its twin for blocks
                stored = block_transform(name, stored.rows(*rows)) if block_transform is not None else None
            elif stored is not None:
                stored = stored.rows(*rows)
            qs.append(stored)
            b = reader.get(f"{name}.bias", rows=rows) if f"{name}.bias" in reader else None
            if transform is not None:
                w, b = transform(name, w, b)
            ws.append(w)
            bs.append(b)
        bias = None
        if any(b is not None for b in bs):
            zero = [np.zeros(w.shape[0], np.float32) for w in ws]
            bias = np.concatenate([b if b is not None else z for z, b in zip(zero, bs, strict=True)])
        blocks = BlockQuantized.concat(qs) if all(q is not None for q in qs) else None  # type: ignore[arg-type]
        return cls(np.concatenate(ws, axis=0), bias, gemm, blocks)

    def __call__(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.gemm(x)


class RowParallelLinear:
    def __init__(
        self,
        weight: np.ndarray,
        bias: np.ndarray | None,
        all_reduce: AllReduce | None,
        gemm: Gemm | None = None,
        blocks: BlockQuantized | None = None,
    ) -> None:
        # weight: [out, in_local]; with an all-reduce the bias is added after it, once
        fuse_bias = all_reduce is None
        self.gemm = (gemm or PaddleGemm()).weight(weight, bias if fuse_bias else None, blocks)
        self.bias = to_param(bias) if bias is not None and not fuse_bias else None
        self.all_reduce = all_reduce

    @classmethod
    def load(
        cls,
        reader: WeightReader,
        name: str,
        unit: int,
        shard: Shard,
        all_reduce: AllReduce | None,
        gemm: Gemm | None = None,
    ) -> RowParallelLinear:
        total = reader.shape(f"{name}.weight")[1]
        lo, hi = shard.split(total // unit, f"{name} input groups")
        w = reader.get(f"{name}.weight", cols=(lo * unit, hi * unit))
        b = reader.get(f"{name}.bias") if f"{name}.bias" in reader else None
        if shard.world > 1 and all_reduce is None:
            raise ConfigError("tensor parallelism needs an all_reduce callable")
        stored = reader.blocks(f"{name}.weight") if wants_blocks(gemm) else None
        blocks = stored.cols(lo * unit, hi * unit) if stored is not None else None
        return cls(w, b, all_reduce if shard.world > 1 else None, gemm, blocks)

    def __call__(self, x: paddle.Tensor) -> paddle.Tensor:
        y = self.gemm(x)
        if self.all_reduce is not None:
            y = self.all_reduce(y)
        return y + self.bias if self.bias is not None else y
