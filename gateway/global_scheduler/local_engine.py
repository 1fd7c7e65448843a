"""The one thing the scheduler needs from an instance: run a request on its own engine, yielding chunks.

The gateway implements it with its Triton stream (one stream per call). On a resumed request
(`request.resume_token_ids` non-empty) the engine must continue as if those ids had already been generated:
prompt = the prompt's tokens + resume ids, `max_tokens` counts them, `completion_tokens` includes them,
and the first text delta is exactly the text that follows them (docs/deploy.md: the Triton side).
Errors are raised as `paddlellm.errors.EngineError` subclasses; they reach the origin's client unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from gateway.global_scheduler.work_items import Chunk, WorkRequest


class LocalEngine(Protocol):
    def run(self, request: WorkRequest) -> AsyncIterator[Chunk]:
        """An async generator of the request's chunks; the last has a non-empty `finish_reason`.

        Closing the generator early (aclose) must cancel the engine-side request.
        """
        ...
