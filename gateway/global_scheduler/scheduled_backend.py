"""The global scheduler as the gateway's `GenerationBackend` (gateway/backend_protocol.py), over the local
ensemble.

Wiring: `create_app(settings, backend_factory=global_backend_factory(scheduler_settings, capacity))`. Each
request the gateway opens is submitted to the scheduler; whichever instance runs it does so through its own
local ensemble (`TritonLocalEngine`), and the chunks come back as the `EnsembleResponse`s the gateway shapes.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from gateway.global_scheduler.scheduler_errors import CannotResume
from gateway.global_scheduler.scheduler_instance import EventSink, GlobalScheduler, RequestStream
from gateway.global_scheduler.scheduler_settings import GlobalSchedulerSettings
from gateway.global_scheduler.work_items import Chunk, EnsembleInputs, WorkRequest
from gateway.translate import EnsembleRequest, EnsembleResponse
from paddlellm.errors import EngineError


class TritonLocalEngine:
    """This instance's LocalEngine: its ensemble (`gateway.triton_stream.TritonEnsemble`, or anything with
    its `open`).

    A resumed request needs the ensemble's optional `resume_ids` input; `open` must accept `resume_ids=` for
    that (until it does, a resumed request ends with an error rather than with wrong text)."""

    def __init__(self, local: Any) -> None:
        self.local = local
        self._can_resume = "resume_ids" in inspect.signature(local.open).parameters

    async def run(self, request: WorkRequest) -> AsyncIterator[Chunk]:
        inputs = request.inputs
        req = EnsembleRequest(inputs.prompt, inputs.messages, inputs.sampling, tools=inputs.tools)
        rid = f"{request.request_id}.{request.attempt}" if request.attempt else request.request_id
        if request.resume_token_ids:
            if not self._can_resume:
                raise CannotResume(
                    f"request {request.request_id}: its instance died mid-stream and this instance's "
                    "ensemble cannot resume it (no resume_ids input)"
                )
            stream = self.local.open(req, rid, resume_ids=request.resume_token_ids)
        else:
            stream = self.local.open(req, rid)
        try:
            while True:
                resp: EnsembleResponse = await stream.next()
                if resp.final and not (resp.text or resp.token_ids or resp.finish_reason):
                    # The empty closing response: the engine always sends its finish reason before it.
                    return
                chunk = Chunk(
                    resp.text,
                    resp.token_ids,
                    resp.finish_reason,
                    resp.prompt_tokens,
                    resp.completion_tokens,
                    resp.engine_stats,
                    cached_tokens=resp.cached_tokens,
                    logprobs=resp.logprobs,
                )
                if resp.finish_reason and not resp.final:
                    # Read to Triton's final response first, so it completes the request normally.
                    while not (await stream.next()).final:
                        pass
                yield chunk
                if resp.final or resp.finish_reason:
                    return
        finally:
            stream.cancel()  # no-op when the stream ended; aborts the engine request when the run is cut


class SchedulerStream:
    """One request's responses through the scheduler (`gateway.backend_protocol.ResponseStream`)."""

    def __init__(self, scheduler: GlobalScheduler, req: EnsembleRequest, request_id: str) -> None:
        self._scheduler, self._req, self._rid = scheduler, req, request_id
        self._chunks: RequestStream | None = None
        self._closing = False
        self.done = False

    async def next(self) -> EnsembleResponse:
        if self.done:
            raise StopAsyncIteration
        if self._closing:
            self.done = True
            return EnsembleResponse(final=True)
        try:
            if self._chunks is None:
                inputs = EnsembleInputs(
                    self._req.prompt, self._req.messages, self._req.sampling, self._req.tools
                )
                self._chunks = await self._scheduler.submit(inputs, self._rid)
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            self.done = True
            raise EngineError(f"request {self._rid}: the stream ended without a finish reason") from None
        except EngineError:
            self.done = True
            raise
        self._closing = bool(chunk.finish_reason)
        return EnsembleResponse(
            chunk.text,
            chunk.token_ids,
            chunk.finish_reason,
            chunk.prompt_tokens,
            chunk.completion_tokens,
            chunk.engine_stats,
            chunk.cached_tokens,
            logprobs=chunk.logprobs,
        )

    def cancel(self) -> None:
        if self.done:
            return
        self.done = True
        if self._chunks is not None:
            self._chunks.close()  # withdraws it from the queue, or stops its run here or elsewhere


class GlobalBackend:
    def __init__(self, scheduler: GlobalScheduler, local: Any) -> None:
        self.scheduler, self.local = scheduler, local

    def open(self, req: EnsembleRequest, request_id: str) -> SchedulerStream:
        return SchedulerStream(self.scheduler, req, request_id)

    async def check_ready(self, timeout_s: float, probe: bool, cache_s: float) -> str | None:
        if not self.scheduler.healthy:
            return f"global scheduler: {self.scheduler.settings.address} (Redis) is unavailable"
        return await self.local.check_ready(timeout_s, probe, cache_s)

    async def drain(self) -> None:
        await self.local.drain()


def global_backend_factory(
    settings: GlobalSchedulerSettings,
    capacity: int,
    instance_id: str | None = None,
    on_event: EventSink | None = None,
) -> Callable[[Any], AbstractAsyncContextManager[GlobalBackend]]:
    """For `create_app(backend_factory=...)`: joins the topic at start-up, leaves at shutdown.
    `on_event`: see `GlobalScheduler`."""

    @asynccontextmanager
    async def factory(local: Any) -> AsyncIterator[GlobalBackend]:
        scheduler = GlobalScheduler(settings, TritonLocalEngine(local), capacity, instance_id, on_event)
        await scheduler.start()
        try:
            yield GlobalBackend(scheduler, local)
        finally:
            await scheduler.stop()

    return factory
