"""The seam between serving and whatever runs a request: the local Triton ensemble (`TritonEnsemble`), or a
wrapper around it such as the global scheduler, which may run the request on another instance.

`create_app(..., backend_factory=f)` builds the app's backend as `f(local_triton_ensemble)`.
"""

from __future__ import annotations

from typing import Protocol

from gateway.translate import EnsembleRequest, EnsembleResponse


class ResponseStream(Protocol):
    """One request's responses, in order, ending with one whose `final` is set."""

    done: bool

    async def next(self) -> EnsembleResponse:
        """The next response; raises a paddlellm.errors.EngineError subclass when the request failed."""
        ...

    def cancel(self) -> None:
        """Stop the request wherever it runs (no-op once done); must not block."""
        ...


class GenerationBackend(Protocol):
    def open(self, req: EnsembleRequest, request_id: str) -> ResponseStream: ...

    async def check_ready(self, timeout_s: float, probe: bool, cache_s: float) -> str | None:
        """None when requests can be served; otherwise why not (for /health)."""
        ...

    async def drain(self) -> None:
        """At shutdown: let cleanup in flight (aborts) finish."""
        ...
