"""Sampler: one token per row of logits, batch-invariant and reproducible across preemption.

Plain greedy rows (temperature 0, no penalties, no min_tokens suppression) take one Paddle argmax over the
batch and move only ids. The other rows are copied to numpy and processed in float64:
1. OpenAI penalties over the request's output tokens: logit -= frequency * count + presence * (count > 0);
2. min_tokens: EOS and the request's stop ids get -inf while fewer outputs than min_tokens exist;
3. greedy -> argmax; else softmax(logits / temperature), keep the smallest top-probability set whose mass
   reaches top_p (ties broken by token id), and invert the CDF at u.
u is a pure function of (seed, position of the new token in the sequence): a splitmix64 hash, so neither the
batch around a request nor a recompute after preemption changes its draws.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import paddle

from paddlellm.layers.host_tensor import host_tensor
from paddlellm.sampling import SamplingParams

_M64 = (1 << 64) - 1


def _mix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def uniform(seed: int, position: int) -> float:
    """A uniform draw in [0, 1) determined by (seed, position) alone."""
    return (_mix64(_mix64(seed & _M64) ^ (position & _M64)) >> 11) / float(1 << 53)


@dataclass(frozen=True)
class SampleRow:
    params: SamplingParams
    seed: int
    position: int  # index the sampled token will have in prompt + outputs
    output_ids: Sequence[int]  # the request's outputs so far (may be empty when no penalty needs them)
    num_outputs: int | None = None  # len(outputs so far); None: len(output_ids)

    @property
    def outputs_so_far(self) -> int:
        return len(self.output_ids) if self.num_outputs is None else self.num_outputs


class Sampler:
    def __init__(
        self, eos_token_ids: Sequence[int], tensor: Callable[[Any], paddle.Tensor] = host_tensor
    ) -> None:
        self._tensor = tensor  # numpy -> tensor (the runner's StepTensors)
        self.eos = tuple(eos_token_ids)

    def _suppressed(self, row: SampleRow) -> tuple[int, ...]:
        if row.outputs_so_far >= row.params.min_tokens:
            return ()
        return self.eos + tuple(row.params.stop_token_ids)

    def _plain_greedy(self, row: SampleRow) -> bool:
        p = row.params
        return p.greedy and p.frequency_penalty == 0 and p.presence_penalty == 0 and not self._suppressed(row)

    def sample(self, logits: paddle.Tensor, rows: Sequence[SampleRow]) -> list[int]:
        """logits [len(rows), vocab] -> one token id per row."""
        plain = [self._plain_greedy(r) for r in rows]
        out = [0] * len(rows)
        if any(plain):
            ids = paddle.argmax(logits, axis=-1).numpy()
            for i, ok in enumerate(plain):
                if ok:
                    out[i] = int(ids[i])
        slow = [i for i, ok in enumerate(plain) if not ok]
        if slow:
            picked = logits if len(slow) == len(rows) else paddle.gather(logits, self._tensor(np.int64(slow)))
            host = picked.numpy()
            for j, i in enumerate(slow):
                out[i] = self._sample_row(host[j].astype(np.float64), rows[i])
        return out

    def _sample_row(self, logits: np.ndarray, row: SampleRow) -> int:
        p = row.params
        vocab = logits.shape[0]
        if row.output_ids and (p.frequency_penalty or p.presence_penalty):
            ids = np.asarray(row.output_ids, dtype=np.int64)
            counts = np.bincount(ids[(ids >= 0) & (ids < vocab)], minlength=vocab).astype(np.float64)
            logits -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0)
        banned = [t for t in self._suppressed(row) if 0 <= t < vocab]
        if banned:
            logits[banned] = -np.inf
        if p.greedy:
            return int(np.argmax(logits))
        z = logits / p.temperature
        z -= z.max()
        probs = np.exp(z)
        order = np.argsort(-probs, kind="stable")
        sorted_p = probs[order] / probs.sum()
        cum = np.cumsum(sorted_p)
        if p.top_p < 1.0:
            keep = int(np.searchsorted(cum, p.top_p, side="left")) + 1
            cum = np.cumsum(sorted_p[:keep])
        u = uniform(row.seed, row.position) * cum[-1]
        k = int(np.searchsorted(cum, u, side="right"))
        return int(order[min(k, len(cum) - 1)])
