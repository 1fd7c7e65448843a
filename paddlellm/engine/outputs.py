"""Typed values that cross the engine's boundaries.

Scheduler -> executor/workers: `SchedulerOutput` sends a request's full state once (`NewRequestData`, also
after a preemption, when it is recomputed) and only the changes afterwards (`CachedRequestData`).
Executor -> scheduler: `ModelRunnerOutput`. Engine -> callers: `RequestOutput`, one per request per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from paddlellm.sampling import SamplingParams


@dataclass(frozen=True)
class NewRequestData:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    output_token_ids: tuple[int, ...]  # non-empty when recomputing after preemption
    sampling: SamplingParams
    seed: int  # resolved seed: every draw derives from (seed, position)
    block_ids: tuple[int, ...]
    num_computed_tokens: int  # tokens whose KV is already in the cache: a cached prefix, else 0


@dataclass(frozen=True)
class CachedRequestData:
    request_id: str
    new_token_ids: tuple[int, ...]  # sampled since this request was last scheduled (the runner appends)
    new_block_ids: tuple[int, ...]  # blocks appended to its block table
    num_computed_tokens: int


@dataclass(frozen=True)
class SchedulerOutput:
    new_requests: tuple[NewRequestData, ...]
    cached_requests: tuple[CachedRequestData, ...]
    # Tokens to compute this step per request id, in batch order (new and cached). A request is sampled when
    # num_computed_tokens + scheduled reaches its known token count (the end of its prompt + outputs).
    num_scheduled_tokens: dict[str, int]
    # Requests whose runner state must be dropped (finished, aborted or preempted since the last step).
    finished_request_ids: frozenset[str] = frozenset()

    @property
    def total_tokens(self) -> int:
        return sum(self.num_scheduled_tokens.values())

    @property
    def is_empty(self) -> bool:
        return not self.num_scheduled_tokens


@dataclass(frozen=True)
class ModelRunnerOutput:
    sampled_token_ids: dict[str, int]  # one token for each request whose scheduled chunk reached its end


@dataclass(frozen=True)
class RequestTimings:
    arrival: float  # time.monotonic() when the engine accepted the request
    first_scheduled: float | None = None
    first_token: float | None = None
    finished: float | None = None


@dataclass(frozen=True)
class RequestOutput:
    request_id: str
    new_token_ids: tuple[int, ...]
    num_prompt_tokens: int
    num_output_tokens: int  # cumulative
    num_cached_tokens: int = 0  # prompt tokens its first admission found in the prefix cache
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    error: Exception | None = None  # set when finish_reason == "error" (e.g. Overloaded after the TTL)
    timings: RequestTimings | None = field(default=None)
