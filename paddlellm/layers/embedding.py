"""Vocab-parallel token embedding and LM head.

Rank r holds vocab rows [r*V/w, (r+1)*V/w) (the vocab is padded up to a multiple of the world size).
- Embedding: ids outside the shard look up a zero row; the all-reduce sums the one non-zero contribution.
- LM head: each rank computes its slice of the logits and places it in a zero [T, V] tensor; the all-reduce
  assembles the full logits on every rank (sampling then runs identically everywhere).
With world == 1 these are a plain gather and the head's GEMM: one packed-kernel call (layers/gemm.py), or,
with Paddle's matmul, a few calls over vocab chunks in the layout that is faster for the batch size.
"""

from __future__ import annotations

import numpy as np
import paddle

from paddlellm.layers.gemm import Gemm, PaddleGemm, to_param
from paddlellm.layers.linear import AllReduce, Shard
from paddlellm.weight_reader import WeightReader


def _vocab_rows(reader: WeightReader, name: str, vocab: int, shard: Shard) -> tuple[np.ndarray, int, int]:
    per = -(-vocab // shard.world)
    lo, hi = shard.rank * per, min((shard.rank + 1) * per, vocab)
    rows = reader.get(name, rows=(lo, hi))
    if rows.shape[0] < per:  # the last rank pads its shard
        rows = np.concatenate([rows, np.zeros((per - rows.shape[0], rows.shape[1]), np.float32)])
    return rows, lo, per


class VocabParallelEmbedding:
    def __init__(
        self, reader: WeightReader, name: str, vocab: int, shard: Shard, all_reduce: AllReduce | None
    ) -> None:
        rows, self.start, self.per = _vocab_rows(reader, name, vocab, shard)
        self.world = shard.world
        if self.world > 1:  # one extra zero row for ids outside the shard
            rows = np.concatenate([rows, np.zeros((1, rows.shape[1]), np.float32)])
        self.weight = to_param(rows)
        self.all_reduce = all_reduce

    def __call__(self, ids: paddle.Tensor) -> paddle.Tensor:
        if self.world == 1:
            return paddle.gather(self.weight, ids)
        local = ids - self.start
        outside = paddle.logical_or(local < 0, local >= self.per)
        local = paddle.where(outside, paddle.full_like(local, self.per), local)
        assert self.all_reduce is not None
        return self.all_reduce(paddle.gather(self.weight, local))


class ParallelLMHead:
    """Logits for this rank's vocab slice, by the injected `Gemm`'s head layout (`Gemm.head_weight`: one
    packed-kernel call, or vocab chunks for Paddle's matmul)."""

    def __init__(
        self,
        reader: WeightReader,
        name: str,
        vocab: int,
        shard: Shard,
        all_reduce: AllReduce | None,
        table: paddle.Tensor | None = None,
        gemm: Gemm | None = None,
    ) -> None:
        """table: the tied embedding's [V_local, hidden] tensor, which a Gemm may share instead of copying."""
        rows, self.start, self.per = _vocab_rows(reader, name, vocab, shard)
        self.vocab = vocab
        self.world = shard.world
        self.all_reduce = all_reduce
        stored = reader.blocks(name) if getattr(gemm, "takes_blocks", False) else None
        blocks = stored.rows(self.start, self.start + rows.shape[0]) if stored is not None else None
        if blocks is not None and blocks.q.shape[0] != rows.shape[0]:
            blocks = None  # a vocab padded for TP: quantize the padded rows instead
        self._logits = (gemm or PaddleGemm()).head_weight(rows, table, blocks)

    def __call__(self, x: paddle.Tensor) -> paddle.Tensor:
        logits = self._logits(x)
        if self.world == 1:
            return logits
        full = paddle.zeros([x.shape[0], self.per * self.world], dtype=logits.dtype)
        full[:, self.start : self.start + self.per] = logits
        assert self.all_reduce is not None
        return self.all_reduce(full)[:, : self.vocab]
