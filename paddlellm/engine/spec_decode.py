"""SpecDecode: the scheduler's side of speculative decoding: which requests get a draft this step, how long,
and the acceptance counters the metrics read.

How a step verifies (the runner's side is in worker/model_runner.py): a decoding request with a draft d of k
tokens runs 1 + k rows, its last known token then d. Row j's logits give the token at the request's next
position + j, sampled with that request's own draw for that position (the sampler's u is a function of
(seed, position) alone) and, for penalties and min_tokens, with d[:j] as the outputs so far. Row j's token is
exactly what decoding without a draft would sample once d[:j] is accepted, so the accepted run, the matching
prefix of d plus the first token that differs (or the bonus token after all k), is the same tokens a run
without speculation produces: outputs are bit-identical on and off (given batch-invariant kernels, which
compute a row the same way alone or in a chunk: docs/prefix-caching.md).

Who gets no draft: requests still prefilling, and every request in a step with more than
`disable_by_batch_size` running (the step is compute-bound there; drafts would cost more than they save).
Requests with a grammar draft too: the scheduler fills a mask per drafted position (grammar_rows.py) and cuts
the draft where the grammar refuses a token.
A draft never makes the scheduler preempt anything: it only takes blocks that are free.

Draft length adapts per request: verifying a row is not free (measured on the default model with 4-bit
weights on 2 cores: 1 + 1 rows cost ~1.1x a single-token step, 1 + 5 ~1.7x, 1 + 8 ~2.1x; fp32 1 + 8 ~1.25x),
so
a request whose drafts keep failing must not keep paying for k rows. Each request's next draft has at most
`draft_len` tokens: it starts at 2, doubles (up to k) after a draft accepted whole, and becomes 1 + the
accepted count after one rejected part-way. A request that is copying reaches k in a few steps; one whose
drafts fail falls back to 1-token drafts, which cost little.
"""

from __future__ import annotations

from paddlellm.engine.ngram_proposer import TokenHistory, propose
from paddlellm.engine.request import Request
from paddlellm.speculative import SpeculativeConfig


class SpecDecode:
    def __init__(self, spec: SpeculativeConfig, max_model_len: int) -> None:
        self.spec = spec
        self.max_model_len = max_model_len
        # Running totals since start (the metrics export their growth): steps with a draft, draft tokens,
        # accepted draft tokens, and accepted tokens at each draft position (position j accepted implies
        # every position before it was).
        self.num_drafts = 0
        self.num_draft_tokens = 0
        self.num_accepted_tokens = 0
        self.accepted_per_position = [0] * spec.num_speculative_tokens
        self.drafted_per_position = [0] * spec.num_speculative_tokens  # drafts that reached position j

    def reset_counts(self) -> None:
        self.num_drafts = self.num_draft_tokens = self.num_accepted_tokens = 0
        self.accepted_per_position = [0] * self.spec.num_speculative_tokens
        self.drafted_per_position = [0] * self.spec.num_speculative_tokens

    def active(self, num_running: int) -> bool:
        """Whether this step drafts at all (a large batch is compute-bound: no drafts)."""
        return num_running <= self.spec.disable_by_batch_size

    def draft(self, req: Request, room: int) -> tuple[int, ...]:
        """Draft tokens for a decoding request (its one unknown-KV token is its last), at most `room` (what
        the step's token budget spares) and never more than its max_tokens or max_model_len could accept."""
        p = req.sampling_params
        assert p.max_tokens is not None  # resolved at add
        # The run is the draft's accepted prefix plus one token: its length may reach what is left of both.
        k = min(
            req.draft_len,
            self.spec.num_speculative_tokens,
            room,
            p.max_tokens - req.num_output_tokens - 1,
            self.max_model_len - req.num_tokens,
        )
        if k < 1:
            return ()
        if req.draft_history is None:
            req.draft_history = TokenHistory(req.prompt_token_ids)
        tokens = req.draft_history.sync(req.output_token_ids)
        found = propose(tokens, k, self.spec.prompt_lookup_min, self.spec.prompt_lookup_max)
        return tuple(int(t) for t in found)

    def record(self, req: Request, num_draft: int, num_accepted: int) -> None:
        """One verified draft of `num_draft` tokens of which the first `num_accepted` were accepted."""
        k = self.spec.num_speculative_tokens
        req.draft_len = min(k, 2 * num_draft) if num_accepted == num_draft else num_accepted + 1
        self.num_drafts += 1
        self.num_draft_tokens += num_draft
        self.num_accepted_tokens += num_accepted
        for j in range(num_accepted):
            self.accepted_per_position[j] += 1
        for j in range(num_draft):
            self.drafted_per_position[j] += 1
