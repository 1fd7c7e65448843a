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

from paddlellm.layers.gemm import Gemm, GemmWeight, PaddleGemm
from paddlellm.layers.linear import AllReduce, Shard, to_param
from paddlellm.worker.weights import WeightReader


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
    """Logits for this rank's vocab slice. With the packed kernel: one call (it streams the [hidden, V]
    matrix from memory once per 64 rows). With Paddle's matmul: vocab chunks, by the layout that is fastest
    for the batch size on this CPU's MKL (single-thread CPU time, 576 x 49,152 head): batch 1: x @ W
    4.9 ms, x @ E^T 9.4; batch 8: 8192-column chunks of x @ W 15.0, whole x @ E^T 20.8, whole x @ W 30.1;
    batch 32: 2048-row chunks of x @ E^T 27.7, whole 34.3, x @ W 63.6. The E^T chunks are row views of the
    [V, hidden] table (the embedding itself when tied), so only the [hidden, V] copy costs memory."""

    NT_MIN_ROWS = 12
    NN_CHUNK = 8192
    NT_CHUNK = 2048

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
        """table: the tied embedding's [V_local, hidden] tensor, shared as the row-major copy."""
        rows, self.start, self.per = _vocab_rows(reader, name, vocab, shard)
        self.vocab = vocab
        self.world = shard.world
        self.all_reduce = all_reduce
        self.packed: GemmWeight | None = None
        if gemm is not None and not isinstance(gemm, PaddleGemm):
            self.packed = gemm.weight(rows)
            return
        n = rows.shape[0]
        self.nn_chunks = [to_param(rows[i : i + self.NN_CHUNK].T) for i in range(0, n, self.NN_CHUNK)]
        shared = table is not None and list(table.shape) == list(rows.shape)
        full = table if shared else to_param(rows)  # [V_local, hidden]
        assert full is not None
        self.nt_chunks = [full[i : i + self.NT_CHUNK] for i in range(0, n, self.NT_CHUNK)]

    def _logits(self, x: paddle.Tensor) -> paddle.Tensor:
        if self.packed is not None:
            return self.packed(x)
        if x.shape[0] >= self.NT_MIN_ROWS:
            parts = [paddle.matmul(x, c, transpose_y=True) for c in self.nt_chunks]
        else:
            parts = [paddle.matmul(x, c) for c in self.nn_chunks]
        return parts[0] if len(parts) == 1 else paddle.concat(parts, axis=1)

    def __call__(self, x: paddle.Tensor) -> paddle.Tensor:
        logits = self._logits(x)
        if self.world == 1:
            return logits
        full = paddle.zeros([x.shape[0], self.per * self.world], dtype=logits.dtype)
        full[:, self.start : self.start + self.per] = logits
        assert self.all_reduce is not None
        return self.all_reduce(full)[:, : self.vocab]
