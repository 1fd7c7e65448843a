"""What the engine hands its callers: `RequestOutput`, one per request per step, with its `RequestTimings`.

The step's own types (scheduler output, runner output) live below the engine in `paddlellm/step_types.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from paddlellm.step_types import TokenLogprobs


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
    # sampling_params.logprobs set: one entry per id of new_token_ids (ids passed in as resume_ids have none
    # and are never new); None when not asked.
    logprobs: tuple[TokenLogprobs, ...] | None = None
    # sampling_params.prompt_logprobs set: the whole prompt's, index 0 None, on the request's first output
    # once its prompt was computed; None otherwise.
    prompt_logprobs: tuple[TokenLogprobs | None, ...] | None = None
