"""Request: one generation request as the scheduler tracks it (pure Python)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from paddlellm.engine.outputs import RequestTimings
from paddlellm.sampling import SamplingParams
from paddlellm.step_types import MultiModalPrompt, TokenLogprobs

if TYPE_CHECKING:  # the engine core does not import the grammar library; it only drives a matcher
    from paddlellm.engine.ngram_proposer import TokenHistory
    from paddlellm.structured.matcher import GrammarMatcher


class RequestStatus(enum.Enum):
    WAITING = "waiting"  # queued, or preempted and waiting to be recomputed
    RUNNING = "running"  # holds KV blocks; prefilling or decoding
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    sampling_params: SamplingParams
    seed: int  # resolved: sampling_params.seed, or one the engine derived
    arrival_time: float  # clock() when the engine accepted it
    mm: MultiModalPrompt | None = None  # its images (prefix-cache keys digest their hashes); None: text only
    output_token_ids: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    num_computed_tokens: int = 0  # tokens whose KV is in the cache
    block_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    error: Exception | None = None
    num_preemptions: int = 0
    # Prefix caching: content keys of its full blocks (prompt + outputs, grown as blocks fill), how many of
    # its blocks are registered in the cache, and the prompt tokens its first admission found cached.
    block_hashes: list[bytes] = field(default_factory=list)
    num_registered_blocks: int = 0
    num_cached_tokens: int = 0
    # What the runner already knows, so each step sends only the changes.
    num_synced_outputs: int = 0
    num_synced_blocks: int = 0
    # Speculative decoding cut the block table below num_synced_blocks: the next step tells the runner.
    blocks_cut: bool = False
    # Speculative decoding: its tokens as an array for the n-gram search, created at its first draft.
    draft_history: TokenHistory | None = None
    draft_len: int = 2  # most tokens its next draft may have (adapts to its acceptance: spec_decode.py)
    # Outputs already handed to the caller in a RequestOutput.
    num_emitted: int = 0
    # sampling_params.logprobs set: the entries of the outputs generated here (not of resume ids), in order.
    output_logprobs: list[TokenLogprobs] = field(default_factory=list)
    # sampling_params.prompt_logprobs set: one slot per prompt position (0 stays None), filled as chunks are
    # computed; a recompute after preemption fills them again with the same values. Sent once, complete.
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    prompt_logprobs_sent: bool = False
    # sampling_params.structured_outputs set: the request's position in its grammar, advanced by every output
    # token (resume ids replayed at add). It lives here, not in the runner, so a preempted request keeps it:
    # its outputs are recomputed, never re-sampled, so there is nothing to replay.
    matcher: GrammarMatcher | None = None
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None

    def __post_init__(self) -> None:
        if self.sampling_params.prompt_logprobs is not None and self.prompt_logprobs is None:
            self.prompt_logprobs = [None] * len(self.prompt_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        """Prompt plus outputs: the tokens a recompute from scratch would feed the model."""
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    def all_token_ids(self) -> list[int]:
        return [*self.prompt_token_ids, *self.output_token_ids]

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def prompt_logprobs_ready(self) -> bool:
        return self.prompt_logprobs is not None and None not in self.prompt_logprobs[1:]

    def timings(self) -> RequestTimings:
        return RequestTimings(
            arrival=self.arrival_time,
            first_scheduled=self.first_scheduled_time,
            first_token=self.first_token_time,
            finished=self.finished_time,
        )
