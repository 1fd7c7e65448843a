"""Sampler: one token per row of logits, batch-invariant and reproducible across preemption; logprobs.

Plain greedy rows (temperature 0, no penalties, no min_tokens suppression, no grammar) take one Paddle argmax
over the batch and move only ids. The other rows are copied to numpy and processed in float64, in this order:
0. grammar (structured output): the row's packed mask, filled by the scheduler and sent with the step, sets
   the logits of every token it does not allow to -inf, first, so nothing after it can bring one back and
   top-k/top-p/min-p rank only allowed tokens. Grammar rows get no min_tokens suppression (the grammar
   alone decides where the answer may end; engine/grammar_rows.py). A mask that allows nothing (a bug
   upstream) is not applied: the scheduler then refuses the drawn token and ends that request;
1. OpenAI penalties over the request's output tokens: logit -= frequency * count + presence * (count > 0);
2. min_tokens: EOS and the request's stop ids get -inf while fewer outputs than min_tokens exist;
3. greedy -> argmax; else p = softmax(logits / temperature), tokens ordered by p (ties by token id);
4. min_p: keep the tokens with p >= min_p * max p;
5. top_k: keep the k most likely of those (0 or -1: all);
6. top_p: renormalise what is left and keep its smallest most-likely prefix whose mass reaches top_p;
7. invert the CDF of the kept tokens at u.
Steps 4-5 only run when asked, so the draws for other params are those of the sampler before them.
u is a pure function of (seed, position of the new token in the sequence): a splitmix64 hash, so neither the
batch around a request nor a recompute after preemption changes its draws (with a grammar: a function of
(seed, position, mask)).

Logprobs (`token_logprobs`): for the rows whose sampling_params.logprobs is set (and for prompt positions,
model_runner.py), log-softmax of the raw logits, before any of the steps above (vLLM's default
`raw_logprobs`), the grammar mask included: the chosen token's value and rank, and the N most likely
(id, logprob), which may be tokens the grammar did not allow; the whole batch at once, without sorting the
vocabulary (paddlellm/worker/logprob_math.py). Rows that did not ask cost nothing: they are neither copied
nor scanned.

Sampling orders only the head of the vocabulary (`_leading`: the 256 most likely tokens and any tied with
the last, exactly the prefix a stable sort of all of them would give), growing it 8x while the kept set
(min_p, top_k, the mask) or the draw point lies beyond it: a full sort of 49k probabilities per row cost
~4.8 ms, 150 ms per step at 32 sampled rows; the head costs ~0.3-1 ms. The draws are those of the full
sort (a test replays it).
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
from paddlellm.structured.bitmask import unpack_token_bitmask
from paddlellm.worker.logprob_math import LogprobMath
from paddlellm.worker.logprob_math import top_ids as batch_top_ids

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
    mask: np.ndarray | None = None  # structured output: packed int32 allowed-token bitmask (bitmask.py)

    @property
    def outputs_so_far(self) -> int:
        return len(self.output_ids) if self.num_outputs is None else self.num_outputs


class Sampler:
    def __init__(
        self, eos_token_ids: Sequence[int], tensor: Callable[[Any], paddle.Tensor] = host_tensor
    ) -> None:
        self._tensor = tensor  # numpy -> tensor (the runner's StepTensors)
        self.eos = tuple(eos_token_ids)
        self._logprob_math = LogprobMath()  # keeps its exp buffer across steps

    def _suppressed(self, row: SampleRow) -> tuple[int, ...]:
        if row.outputs_so_far >= row.sampling_params.min_tokens or row.mask is not None:
            return ()
        return self.eos + tuple(row.sampling_params.stop_token_ids)

    def _plain_greedy(self, row: SampleRow) -> bool:
        p = row.sampling_params
        return (
            p.greedy
            and p.frequency_penalty == 0
            and p.presence_penalty == 0
            and row.mask is None
            and not self._suppressed(row)
        )

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
                entries = self._logprob_math.token_logprobs(
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
        masked = False
        if row.mask is not None:
            allowed = unpack_token_bitmask(row.mask, vocab)
            masked = bool(allowed.any())
            if masked:
                logits[~allowed] = -np.inf
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
        total = probs.sum()
        u0 = uniform(row.seed, row.position)
        head = _HEAD
        while True:
            order, complete = _leading(probs, head)
            sorted_p = probs[order] / total
            # The kept set (min_p, top_k, the mask) as the whole sorted vocabulary would give it; `cut`: it is
            # known to end inside this head, so the rest of the order is not needed.
            # `pending`: a constraint whose cut lies beyond this head (then the head must grow).
            keep, cut, pending = len(sorted_p), False, False
            if p.min_p > 0.0:  # sorted descending: the kept tokens are a prefix
                n = int(np.count_nonzero(sorted_p >= p.min_p * sorted_p[0]))
                keep, cut, pending = n, n < len(sorted_p), n == len(sorted_p)
            if 0 < p.top_k < len(probs):
                if p.top_k <= keep:
                    keep, cut = p.top_k, True
                else:
                    pending = True
            if masked:  # masked tokens have p = 0 and sort last: never keep them (not even by rounding)
                n = int(np.count_nonzero(sorted_p))
                if n < len(sorted_p):
                    keep, cut = min(keep, n), True
                else:
                    pending = True
            if pending and not (cut or complete):
                head *= 8
                continue
            if cut or complete:
                if keep < len(probs):
                    sorted_p = sorted_p[:keep] / sorted_p[:keep].sum()
                cum = np.cumsum(sorted_p)
                if p.top_p < 1.0:
                    keep = int(np.searchsorted(cum, p.top_p, side="left")) + 1
                    cum = np.cumsum(sorted_p[:keep])
                u = u0 * cum[-1]
            else:
                # The whole vocabulary is kept (normalised by its total): the head decides the draw once its
                # mass reaches top_p, or (top_p 1) passes the draw point u0 of the whole mass.
                cum = np.cumsum(sorted_p)
                if (cum[-1] < p.top_p) if p.top_p < 1.0 else (cum[-1] <= u0):
                    head *= 8
                    continue
                if p.top_p < 1.0:
                    keep = int(np.searchsorted(cum, p.top_p, side="left")) + 1
                    cum = np.cumsum(sorted_p[:keep])
                    u = u0 * cum[-1]
                else:
                    u = u0  # of the whole mass, 1
            k = int(np.searchsorted(cum, u, side="right"))
            return int(order[min(k, len(cum) - 1)])


_HEAD = 256  # tokens ordered first when sampling; 8x more while the kept set or the draw lies beyond


def _leading(probs: np.ndarray, n: int) -> tuple[np.ndarray, bool]:
    """The ids of the n most likely tokens (and any tied with the n-th), most likely first, ties by id: the
    exact prefix of a stable sort of the whole vocabulary, without sorting it. complete: it is all of it."""
    vocab = len(probs)
    if n >= vocab:
        return np.argsort(-probs, kind="stable"), True
    bound = np.partition(probs, vocab - n)[vocab - n]
    cand = np.flatnonzero(probs >= bound)
    return cand[np.lexsort((cand, -probs[cand]))], len(cand) == vocab


def top_ids(logits: np.ndarray, n: int) -> np.ndarray:
    """Ids of the n largest of a 1-D `logits`, largest first, ties by id."""
    return batch_top_ids(np.asarray(logits)[None, :], n)[0]


def token_logprobs(
    logits: np.ndarray, token_ids: Sequence[int], num_top: Sequence[int]
) -> list[TokenLogprobs]:
    """Raw logits [R, vocab] -> for row i, the TokenLogprobs of token_ids[i] with its num_top[i] most likely
    alternatives (paddlellm/worker/logprob_math.py; the Sampler keeps its own LogprobMath and buffer)."""
    return LogprobMath().token_logprobs(logits, token_ids, num_top)
