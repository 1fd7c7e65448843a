"""GrammarMatcher: one request's position in its grammar; the allowed next tokens, as a packed bitmask.

Life of a request (see docs/structured-output.md):
    m = compiled.matcher()                  # a cheap copy of the compiled grammar's start state (~1 us)
    each step: m.fill_mask(row)             # packed int32 bitmask over the model's vocab (bitmask.py)
               sampler draws from the masked logits
               m.accept(token)              # advance; False (state unchanged) if the token is not allowed
    done when m.is_terminated (nothing but EOS can follow: finish with "stop" now) or the sampler drew
    EOS while m.accepts_eos.
Preemption by recompute and resume elsewhere rebuild the state with `replay(output_ids)`; speculative decoding
undoes rejected draft tokens with `rollback(n)`; `n` choices start from `copy()`.

A grammar that compiled can still exceed a budget later (llguidance's per-step lexer fuel, Earley items or
row size, e.g. a regex whose expansion is only reached deep into the text): the matcher then raises
`GrammarBudgetExceeded` (an `InvalidRequest` naming the request's field) from `fill_mask` or `accept`, and
the request ends with that error; other requests are not affected.

Not thread-safe: one matcher is driven by one thread at a time (the engine loop). Matchers of one compiled
grammar are independent and may run on different threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from paddlellm.errors import InvalidRequest
from paddlellm.structured.bitmask import mask_words


class GrammarBudgetExceeded(InvalidRequest):
    """The grammar needed more than its budget at this point of the output (a 400-class error: the request's
    grammar is too complex, not the server broken)."""


class GrammarMatcher:
    """Wraps an llguidance LLMatcher; built by `CompiledGrammar.matcher()`."""

    def __init__(
        self,
        llmatcher: Any,
        vocab_size: int,
        eos_token_ids: tuple[int, ...],
        param: str = "structured_outputs",
    ) -> None:
        self._m = llmatcher
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        self.param = param  # the request field the grammar came from: named by errors
        self._accepted = 0  # tokens consumed, EOS included: bounds rollback

    @property
    def mask_words(self) -> int:
        return mask_words(self.vocab_size)

    def fill_mask(self, out: np.ndarray) -> None:
        """Write the allowed next tokens into `out`: a C-contiguous int32 row of `mask_words` words (bit t%32
        of word t//32 = token t allowed). Padding ids past the tokenizer's vocabulary are never allowed; EOS
        is allowed exactly when the grammar accepts. A terminated matcher allows only EOS."""
        if out.dtype != np.int32 or out.shape != (self.mask_words,) or not out.flags["C_CONTIGUOUS"]:
            raise ValueError(f"mask row must be C-contiguous int32 of shape ({self.mask_words},)")
        self._check()
        self._m.unsafe_compute_mask_ptr(out.ctypes.data, out.nbytes)
        self._check()

    def accept(self, token_id: int) -> bool:
        """Advance by one token. A token the grammar does not allow returns False and changes nothing (the
        sampler only draws allowed tokens, so False means a bug or a replay of foreign tokens)."""
        if token_id in self.eos_token_ids:
            # validate_tokens refuses EOS once the grammar is complete (stopped); the mask allows it then
            if not self._m.is_accepting():
                return False
        elif not 0 <= token_id < self.vocab_size or self._m.validate_tokens([token_id]) != 1:
            return False
        if not self._m.consume_token(token_id):  # validated above: a budget ran out
            self._fail()
        self._accepted += 1
        return True

    @property
    def accepts_eos(self) -> bool:
        """The text so far is a complete match: EOS may end it now."""
        return bool(self._m.is_accepting())

    @property
    def is_terminated(self) -> bool:
        """Nothing but EOS can follow (the grammar is complete), or EOS was accepted."""
        return bool(self._m.is_stopped())

    def rollback(self, n: int) -> None:
        """Undo the last n accepted tokens (speculative decoding's rejected drafts)."""
        if not 0 <= n <= self._accepted:
            raise ValueError(f"cannot roll back {n} tokens; {self._accepted} accepted")
        if n and not self._m.rollback(n):
            self._fail()
        self._accepted -= n

    def replay(self, token_ids: Sequence[int]) -> int:
        """Accept already-generated tokens (after preemption, or `resume_ids` on another instance; a finished
        request's final EOS is not replayed: nothing resumes after it). Returns
        how many were accepted: fewer than len(token_ids) when a token is not allowed, the state then being
        after the last allowed one."""
        ids = [int(t) for t in token_ids]
        if any(not 0 <= t < self.vocab_size for t in ids):
            ids = ids[: next(i for i, t in enumerate(ids) if not 0 <= t < self.vocab_size)]
        ok = self._m.validate_tokens(ids) if ids else 0
        if ok and not self._m.consume_tokens(ids[:ok]):
            self._fail()
        self._accepted += ok
        return ok

    def reset(self) -> None:
        """Back to the start state (a preempted request that will replay from scratch)."""
        self._m.reset()
        self._accepted = 0

    def copy(self) -> GrammarMatcher:
        """An independent matcher in the same state (~1 us): one per `n` choice."""
        twin = GrammarMatcher(self._m.deep_copy(), self.vocab_size, self.eos_token_ids, self.param)
        twin._accepted = self._accepted
        return twin

    @property
    def num_accepted(self) -> int:
        return self._accepted

    def _check(self) -> None:
        """Raise GrammarBudgetExceeded if the library's matcher is in its (permanent) error state."""
        if self._m.is_error():
            self._fail()

    def _fail(self) -> None:
        reason = " ".join(self._m.get_error().split())[:500] or "the grammar matcher refused a step"
        raise GrammarBudgetExceeded(
            f"the grammar exceeded its budget while generating: {reason}", param=self.param
        )
