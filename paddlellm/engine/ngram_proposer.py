"""N-gram drafts (prompt lookup): guess a request's next tokens from its own prompt + output, no second model.

`propose` finds the longest suffix of the sequence (between prompt_lookup_min and prompt_lookup_max tokens)
that occurred earlier, and proposes the k tokens that followed that occurrence. Rewrites, code edits and
answers that quote their prompt copy long spans, so the guess is often right; when it is wrong, verification
rejects it and nothing but the step's extra rows is lost.

`TokenHistory` keeps a request's tokens in a growing numpy array (appends only: a request's tokens never
change once known), so a step's search costs no list-to-array copy of the whole context.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class TokenHistory:
    """prompt + outputs as an int64 array, grown in place (capacity doubles: amortised O(1) per token)."""

    def __init__(self, prompt: Sequence[int]) -> None:
        self._buf = np.zeros(max(16, 2 * len(prompt)), dtype=np.int64)
        self._buf[: len(prompt)] = prompt
        self._n = len(prompt)
        self._num_prompt = len(prompt)

    def sync(self, outputs: Sequence[int]) -> np.ndarray:
        """Append the outputs not seen yet; the whole sequence (a view, valid until the next sync)."""
        new = outputs[self._n - self._num_prompt :]
        if new:
            end = self._n + len(new)
            if end > len(self._buf):
                grown = np.zeros(max(end, 2 * len(self._buf)), dtype=np.int64)
                grown[: self._n] = self._buf[: self._n]
                self._buf = grown
            self._buf[self._n : end] = new
            self._n = end
        return self._buf[: self._n]


def propose(tokens: np.ndarray, k: int, lookup_min: int, lookup_max: int) -> np.ndarray:
    """Up to k draft tokens for what follows `tokens`; empty when no suffix of >= lookup_min tokens recurs.

    Algorithm (linear in len(tokens) per call): the candidates are the earlier positions e (with at least one
    token after them) holding the sequence's last token: one vectorised comparison over the whole sequence.
    Pass t (t = 1 .. lookup_max - 1) keeps the candidates whose token t places back also equals the token t
    places before the end, so after pass t the survivors end a match of t + 1 tokens; it stops when none is
    left. Every pass after the first touches only survivors. The longest match of >= lookup_min tokens wins,
    its latest occurrence on ties (the most recent context is the likeliest to continue alike), and the draft
    is what followed it (fewer than k tokens when the sequence ends sooner).
    """
    n = len(tokens)
    if n < lookup_min + 1 or k < 1:
        return tokens[:0]
    alive = np.flatnonzero(tokens[: n - 1] == tokens[n - 1])
    best, best_len = alive, 1
    for t in range(1, min(lookup_max, n - 1)):
        alive = alive[alive >= t]
        alive = alive[tokens[alive - t] == tokens[n - 1 - t]]
        if not len(alive):
            break
        best, best_len = alive, t + 1
    if best_len < lookup_min or not len(best):
        return tokens[:0]
    start = int(best[-1]) + 1
    return tokens[start : start + k]
