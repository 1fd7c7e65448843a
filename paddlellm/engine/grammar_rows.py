"""The scheduler's side of structured output: a request's grammar matcher from add to finish.

Algorithm (docs/structured-output.md, "Engine"):
- add: `start_matcher` copies the compiled grammar's start state and replays the request's `resume_ids` (ids a
  cut run produced under the same grammar); a replay that stops short means they were not produced under it:
  InvalidRequest naming `resume_ids`, before anything is queued.
- schedule: `fill_mask` writes the allowed next tokens of each request that samples this step into a packed
  int32 row (paddlellm/structured/bitmask.py); the rows travel with the step, so every rank applies the same
  mask and none recomputes it.
- update: `stop_reason` advances the matcher by the sampled token and decides the finish. The grammar wins:
  a terminated grammar (nothing but EOS can follow, or EOS was accepted) ends the request with "stop" at
  once, even before `min_tokens` and even with `ignore_eos` (its answer is complete; nothing valid could
  follow). `min_tokens` is not applied to grammar rows at all (the sampler does not ban EOS for them: the
  grammar alone decides where the answer may end). `stop_token_ids` still stop; `max_tokens` or
  `max_model_len` mid-object end with "length" as usual.
- speculative decoding: `fill_draft_masks` fills one row per drafted position by advancing the matcher over
  the draft and rolling it back; update() then advances it by the accepted run, token by token.
- preemption: nothing. The matcher stays with the Request; a recompute re-runs the outputs through the model
  but never re-samples them, so the matcher is already where the outputs left it.

The grammar library is not imported here: the matcher is driven through its methods only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from paddlellm.errors import InvalidRequest

if TYPE_CHECKING:
    from paddlellm.engine.request import Request
    from paddlellm.structured.matcher import GrammarMatcher


class Grammar(Protocol):
    """What the scheduler needs of a compiled grammar (paddlellm.structured.compiler.CompiledGrammar)."""

    def matcher(self) -> GrammarMatcher: ...


def start_matcher(grammar: Grammar, resume_ids: Sequence[int]) -> GrammarMatcher:
    """A fresh matcher advanced past `resume_ids`; InvalidRequest ("resume_ids") if they do not fit it."""
    matcher = grammar.matcher()
    if resume_ids:
        done = matcher.replay(resume_ids)
        if done < len(resume_ids):
            raise InvalidRequest(
                f"resume_ids do not match the request's structured output: id {resume_ids[done]} at "
                f"output {done} is not allowed there (they were not generated under this grammar)",
                param="resume_ids",
            )
    return matcher


def fill_mask(matcher: GrammarMatcher) -> np.ndarray:
    """The allowed next tokens as a new packed int32 row. Raises GrammarBudgetExceeded (an InvalidRequest
    with the spec's param) when the grammar ran out of its per-step budget."""
    row = np.empty(matcher.mask_words, dtype=np.int32)
    matcher.fill_mask(row)
    return row


def fill_draft_masks(matcher: GrammarMatcher, draft: Sequence[int]) -> tuple[np.ndarray, int]:
    """Speculative decoding: the masks of a drafted request's rows, [1 + kept, words], and how many draft
    tokens the grammar allows in a row (kept). Row j is the mask after the draft's first j tokens, exactly
    what a plain decode would fill once they were accepted; a draft token the grammar refuses (the sampler
    could never draw it) or one after the grammar terminated ends the draft there. The matcher is rolled
    back to where it was: the accepted run advances it in update() as usual."""
    rows = [fill_mask(matcher)]
    kept = 0
    try:
        for token in draft:
            if matcher.is_terminated or not matcher.accept(int(token)):
                break
            kept += 1
            rows.append(fill_mask(matcher))
    finally:
        matcher.rollback(kept)
    return np.stack(rows), kept


def stop_reason(req: Request, token: int, max_model_len: int) -> str | None:
    """Advance the request's matcher by `token`; the finish reason, or None to go on. Raises InvalidRequest
    (naming the spec's field) if the grammar refuses the token: the sampler drew it under this grammar's
    mask, which happens only when the mask allowed nothing the grammar can take (it needs text the
    vocabulary cannot spell); GrammarBudgetExceeded if it ran out of budget."""
    matcher = req.matcher
    assert matcher is not None
    if not matcher.accept(token):
        # The mask left nothing the grammar can take: its text needs bytes no token of this vocabulary
        # produces (e.g. a control character SmolLM2 has no token for), so the mask fell back to EOS.
        spec = req.sampling_params.structured_outputs
        raise InvalidRequest(
            "the output constraint cannot be met with this model's vocabulary: it needs text no token "
            f"produces (the grammar refused token {token})",
            param=spec.param if spec is not None else "structured_outputs",
        )
    p = req.sampling_params
    if matcher.is_terminated or token in p.stop_token_ids:
        return "stop"
    assert p.max_tokens is not None  # resolved at add
    if req.num_output_tokens >= p.max_tokens or req.num_tokens >= max_model_len:
        return "length"
    return None
