"""Sampler: one token per row of logits, batch-invariant and reproducible across preemption; logprobs.

Plain greedy rows (temperature 0, no penalties, no min_tokens suppression) take one Paddle argmax over the
batch and move only ids. The other rows are copied to numpy and processed in float64, in this order:
1. OpenAI penalties over the request's output tokens: logit -= frequency * count + presence * (count > 0);
2. min_tokens: EOS and the request's stop ids get -inf while fewer outputs than min_tokens exist;
3. greedy -> argmax; else p = softmax(logits / temperature), tokens ordered by p (ties by token id);
4. min_p: keep the tokens with p >= min_p * max p;
5. top_k: keep the k most likely of those (0 or -1: all);
6. top_p: renormalise what is left and keep its smallest most-likely prefix whose mass reaches top_p;
7. invert the CDF of the kept tokens at u.
Steps 4-5 only run when asked, so the draws for other params are those of the sampler before them.
u is a pure function of (seed, position of the new token in the sequence): a splitmix64 hash, so neither the
batch around a request nor a recompute after preemption changes its draws.

Logprobs (`token_logprobs`): for the rows whose sampling_params.logprobs is set (and for prompt positions,
model_runner.py), log-softmax of the raw logits, before any of the steps above (vLLM's default
`raw_logprobs`): the chosen token's value and rank, and the N most likely (id, logprob). The top N are found
without sorting the vocabulary: the N-th largest of the per-64-token-chunk maxima bounds the N-th largest
logit from below, so only the (few) logits at or above it are sorted (by value, then id). Rows that did not
ask cost nothing: they are neither copied nor scanned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import paddle

from paddlellm.layers.host_tensor import host_tensor
from paddlellm.sampling import SamplingParams
from paddlellm.step_types import TokenLogprobs

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
    sampling_params: SamplingParams
    seed: int
    position: int  # index the sampled token will have in prompt + outputs
    output_ids: Sequence[int]  # the request's outputs so far (empty unless sampling_params.needs_history)
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
        if row.outputs_so_far >= row.sampling_params.min_tokens:
            return ()
        return self.eos + tuple(row.sampling_params.stop_token_ids)

    def _plain_greedy(self, row: SampleRow) -> bool:
        p = row.sampling_params
        return p.greedy and p.frequency_penalty == 0 and p.presence_penalty == 0 and not self._suppressed(row)

    def sample(self, logits: paddle.Tensor, rows: Sequence[SampleRow]) -> list[int]:
        """logits [len(rows), vocab] -> one token id per row."""
        return self._sample(logits, rows, with_logprobs=False)[0]

    def sample_with_logprobs(
        self, logits: paddle.Tensor, rows: Sequence[SampleRow]
    ) -> tuple[list[int], list[TokenLogprobs | None]]:
        """As `sample`, plus the sampled token's TokenLogprobs for each row whose sampling_params.logprobs
        is set (None for the others)."""
        return self._sample(logits, rows, with_logprobs=True)

    def _sample(
        self, logits: paddle.Tensor, rows: Sequence[SampleRow], with_logprobs: bool
    ) -> tuple[list[int], list[TokenLogprobs | None]]:
        """Plain greedy rows: one Paddle argmax. Rows to sample on the host or to compute logprobs for: one
        gather + copy of just those rows."""
        plain = [self._plain_greedy(r) for r in rows]
        out = [0] * len(rows)
        if any(plain):
            ids = paddle.argmax(logits, axis=-1).numpy()
            for i, ok in enumerate(plain):
                if ok:
                    out[i] = int(ids[i])
        slow = [i for i, ok in enumerate(plain) if not ok]
        asked = [i for i, r in enumerate(rows) if with_logprobs and r.sampling_params.logprobs is not None]
        lps: list[TokenLogprobs | None] = [None] * len(rows)
        on_host = sorted({*slow, *asked})
        if on_host:
            if len(on_host) == len(rows):
                picked = logits
            else:
                picked = paddle.gather(logits, self._tensor(np.int64(on_host)))
            host = picked.numpy()
            at = {i: j for j, i in enumerate(on_host)}
            for i in slow:
                out[i] = self._sample_row(host[at[i]].astype(np.float64), rows[i])
            if asked:
                entries = token_logprobs(
                    host[[at[i] for i in asked]],
                    [out[i] for i in asked],
                    [rows[i].sampling_params.logprobs or 0 for i in asked],
                )
                for i, e in zip(asked, entries, strict=True):
                    lps[i] = e
        return out, lps

    def _sample_row(self, logits: np.ndarray, row: SampleRow) -> int:
        p = row.sampling_params
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
        keep = len(sorted_p)
        if p.min_p > 0.0:  # sorted descending: the kept tokens are a prefix
            keep = int(np.count_nonzero(sorted_p >= p.min_p * sorted_p[0]))
        if p.top_k > 0:
            keep = min(keep, p.top_k)
        if keep < len(sorted_p):
            sorted_p = sorted_p[:keep] / sorted_p[:keep].sum()
        cum = np.cumsum(sorted_p)
        if p.top_p < 1.0:
            keep = int(np.searchsorted(cum, p.top_p, side="left")) + 1
            cum = np.cumsum(sorted_p[:keep])
        u = uniform(row.seed, row.position) * cum[-1]
        k = int(np.searchsorted(cum, u, side="right"))
        return int(order[min(k, len(cum) - 1)])


_CHUNK = 64  # logits per chunk when bounding the top N (see the module docstring)


def top_ids(logits: np.ndarray, n: int) -> np.ndarray:
    """Ids of the n largest of a 1-D `logits`, largest first, ties by id."""
    vocab = logits.shape[0]
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    if n >= vocab:
        cand = np.arange(vocab)
    else:
        full = vocab // _CHUNK * _CHUNK
        maxima = logits[:full].reshape(-1, _CHUNK).max(axis=1)
        if full < vocab:
            maxima = np.append(maxima, logits[full:].max())
        if len(maxima) < n:
            maxima = logits  # a tiny vocabulary: bound by the logits themselves
        # n distinct chunks have a maximum >= the n-th largest maximum, so the n-th largest logit is too.
        bound = np.partition(maxima, len(maxima) - n)[len(maxima) - n]
        cand = np.flatnonzero(logits >= bound)
    best = cand[np.lexsort((cand, -logits[cand]))]
    return best[:n]


def token_logprobs(
    logits: np.ndarray, token_ids: Sequence[int], num_top: Sequence[int]
) -> list[TokenLogprobs]:
    """Raw logits [R, vocab] -> for row i, the TokenLogprobs of token_ids[i] with its num_top[i] most likely
    alternatives: log-softmax (max-shifted, the sum of exponentials in float64), rank = 1 + the number of
    strictly larger logits."""
    x = np.asarray(logits, dtype=np.float32)
    if x.shape[0] == 0:
        return []
    m = x.max(axis=1, keepdims=True)
    lse = m[:, 0].astype(np.float64) + np.log(np.exp(x - m).sum(axis=1, dtype=np.float64))
    out = []
    for i, (tok, n) in enumerate(zip(token_ids, num_top, strict=True)):
        row, norm = x[i], float(lse[i])
        chosen = row[tok]
        ids = top_ids(row, n)
        out.append(
            TokenLogprobs(
                int(tok),
                float(chosen) - norm,
                int(np.count_nonzero(row > chosen)) + 1,
                tuple((int(t), float(row[t]) - norm) for t in ids),
            )
        )
    return out
