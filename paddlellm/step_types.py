"""The step's types: what one engine step sends down to the executor and its ranks, and what comes back.

They sit below the engine, the executor and the worker, so that each of those imports them and none imports
the layer above it (engine -> executor -> worker, one direction; `tests/test_boundaries.py`).

Scheduler -> executor/workers: `SchedulerOutput` sends a request's full state once (`NewRequestData`, also
after a preemption, when it is recomputed) and only the changes afterwards (`CachedRequestData`).
Executor -> scheduler: `ModelRunnerOutput` (the sampled tokens and, for the requests that asked, their
`TokenLogprobs`).

Structured output: `SchedulerOutput.grammar_masks` carries, for each request with a grammar that samples this
step, the packed int32 bitmask of its allowed tokens (paddlellm/structured/bitmask.py), filled once by the
scheduler; every TP rank applies the same mask (none recomputes it). Requests without a grammar have no
entry, so they cost nothing.

Speculative decoding: `SchedulerOutput.draft_token_ids` carries, for each decoding request with a draft, the
k proposed tokens; the request is scheduled with 1 + k tokens (its last known token, then the draft), the
runner samples every one of those rows with the request's own per-position draws and returns the accepted
run in `ModelRunnerOutput.accepted_token_ids` (the draft's matching prefix, then the first sampled token that
differs, or the bonus token after a full match). The scheduler decides the drafts; every rank verifies the
same rows.

Images (vision-language checkpoints, docs/multimodal.md): a request with images carries one `MultiModalPrompt`
(its images with their placeholder ranges, its 3-D M-RoPE prompt positions and rope delta), in its
`NewRequestData` only (sent again after a preemption). Text-only requests carry None and take today's path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from paddlellm.sampling import SamplingParams


@dataclass(frozen=True)
class TokenLogprobs:
    """One token's log-probability under the model: log-softmax of the raw logits (before penalties,
    temperature, min_p / top-k / top-p), as vLLM's default `raw_logprobs`."""

    token_id: int
    logprob: float
    rank: int  # 1 = the most likely token (1 + the number of tokens with a strictly higher logit)
    # The N most likely (id, logprob), most likely first, ties by id; N = sampling_params.logprobs (or
    # prompt_logprobs).
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True, eq=False)
class ImageInput:
    """One image of a prompt: what the vision tower needs and where its embeddings go."""

    pixel_values: np.ndarray  # [t*h*w patches, C*T*P*P] float32: the processor's rows
    grid_thw: tuple[int, int, int]  # patches along time, height, width
    content_hash: str  # SHA-256 hex of grid + rows (vision/image_inputs.py): equal hash, equal embeddings
    offset: int  # prompt index of its first placeholder token
    num_tokens: int  # placeholder tokens = embedding rows (t*h*w / merge^2)

    @property
    def end(self) -> int:
        return self.offset + self.num_tokens


@dataclass(frozen=True, eq=False)
class MultiModalPrompt:
    """A prompt's images (prompt order, non-overlapping placeholder runs) and its M-RoPE positions: prompt
    token i rotates by positions[:, i]; any later token j (outputs, drafts) by j + rope_delta on all axes."""

    images: tuple[ImageInput, ...]
    positions: np.ndarray  # [3, prompt length] int64
    rope_delta: int


@dataclass(frozen=True)
class NewRequestData:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    output_token_ids: tuple[int, ...]  # non-empty when recomputing after preemption
    sampling_params: SamplingParams
    seed: int  # resolved seed: every draw derives from (seed, position)
    block_ids: tuple[int, ...]
    num_computed_tokens: int  # tokens whose KV is already in the cache: a cached prefix, else 0
    mm: MultiModalPrompt | None = None  # images; None for text only


@dataclass(frozen=True)
class CachedRequestData:
    request_id: str
    new_token_ids: tuple[int, ...]  # sampled since this request was last scheduled (the runner appends)
    new_block_ids: tuple[int, ...]  # blocks appended to its block table
    num_computed_tokens: int
    # >= 0: first cut the block table to this many blocks (blocks of rejected draft tokens were released),
    # then append new_block_ids; -1: nothing was cut.
    num_kept_blocks: int = -1


@dataclass(frozen=True)
class BlockCopy:
    """Prefix caching's partial hit: copy the KV of the first `rows` tokens of block `src` into block `dst`
    (every layer, K and V), before the step's forward pass."""

    src: int
    dst: int
    rows: int


@dataclass(frozen=True)
class SchedulerOutput:
    new_requests: tuple[NewRequestData, ...]
    cached_requests: tuple[CachedRequestData, ...]
    # Tokens to compute this step per request id, in batch order (new and cached). A request is sampled when
    # num_computed_tokens + scheduled reaches its known token count (the end of its prompt + outputs).
    num_scheduled_tokens: dict[str, int]
    # Requests whose runner state must be dropped (finished, aborted or preempted since the last step).
    finished_request_ids: frozenset[str] = frozenset()
    # Requests with a grammar that sample this step: their allowed next tokens, a packed int32 bitmask of
    # ceil(vocab / 32) words (token t allowed iff bit t % 32 of word t // 32 is set). Only those rows. A
    # request with a draft has [1 + len(draft), words]: the mask of each position it samples.
    grammar_masks: dict[str, np.ndarray] = field(default_factory=dict, compare=False)
    # Speculative decoding: request id -> its draft tokens, fed after its last known token; such a request's
    # num_scheduled_tokens counts them. Only decoding requests (one known token to compute) have drafts.
    draft_token_ids: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # Partial prefix-cache hits of this step's admitted requests; a source is never a destination.
    block_copies: tuple[BlockCopy, ...] = ()

    @property
    def total_tokens(self) -> int:
        return sum(self.num_scheduled_tokens.values())

    @property
    def is_empty(self) -> bool:
        return not self.num_scheduled_tokens


@dataclass(frozen=True)
class ModelRunnerOutput:
    sampled_token_ids: dict[str, int]  # one token for each request whose scheduled chunk reached its end
    # The sampled token's logprobs, for those of them whose sampling_params.logprobs is not None.
    logprobs: dict[str, TokenLogprobs] = field(default_factory=dict)
    # Requests with prompt_logprobs whose chunk covered prompt positions: request id -> (the prompt position
    # of the first entry, one entry per position from there on). Position p's entry is token p's logprob
    # given tokens [0, p), so position 0 never has one.
    prompt_logprobs: dict[str, tuple[int, tuple[TokenLogprobs, ...]]] = field(default_factory=dict)
    # Requests that had a draft (and only they; they have no sampled_token_ids entry): the tokens this step
    # produced, in order: the draft's accepted prefix, then the token sampled where it first differs (or
    # after it all matched). Between 1 and 1 + k tokens. The scheduler still applies the stop rules to each.
    accepted_token_ids: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # Their logprobs (requests with sampling_params.logprobs set), one entry per accepted token.
    accepted_logprobs: dict[str, tuple[TokenLogprobs, ...]] = field(default_factory=dict)
