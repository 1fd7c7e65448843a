"""One generation request, from HTTP body to SSE stream or JSON response.

Flow: take a concurrency slot (429 past the limit) -> read the body within its size limit (413) -> validate
(pydantic, then SamplingParams) -> open the Triton stream (under the request's deadline, if one is set) ->
wait for its first response -> only then commit to HTTP 200. Errors before that point are ordinary 4xx/5xx
responses; after it they are one SSE error chunk and `[DONE]`. A stop-string match, a client disconnect or
the deadline cancels the Triton stream, and the engine is told to abort the request and free its KV blocks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.backend_protocol import GenerationBackend, ResponseStream
from gateway.limits import DeadlineStream, Slot, StreamSlots, read_body
from gateway.openai_errors import ApiError, from_engine, from_validation, model_not_found
from gateway.openai_schema import ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest
from gateway.settings import GatewaySettings
from gateway.translate import Chunk, ChunkShaper, EnsembleResponse, assemble, chat_request, completion_request
from paddlellm.errors import EngineError

log = logging.getLogger("gateway")
T = TypeVar("T")
DONE = "data: [DONE]\n\n"


@dataclass
class GatewayContext:
    settings: GatewaySettings
    backend: GenerationBackend
    slots: StreamSlots


class ClientGone(Exception):
    """The HTTP client disconnected; nobody is listening any more."""


class SSEResponse(StreamingResponse):
    """A StreamingResponse that always watches for the client going away (whatever the ASGI spec version)
    and always closes its body iterator, so the generator's cleanup (cancelling Triton) runs right away."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[str], headers: dict[str, str], on_close: Callable[[], None]):
        super().__init__(content, headers=headers)
        self.on_close = on_close  # runs however the response ends, even if its body never started

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def stream() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:  # uvicorn: writing to a closed connection
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(stream)
                await self.listen_for_disconnect(receive)
                tg.cancel_scope.cancel()
        finally:
            self.on_close()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


class GoneResponse(Response):
    """For a client that is gone: sending may fail (ASGI 2.4 raises OSError), and that is fine."""

    def __init__(self) -> None:
        super().__init__(status_code=499)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except OSError:
            pass


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run `work`, raising ClientGone (and cancelling it) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # we were cancelled (server shutdown): so is the work
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    raise ClientGone()


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _sse(chunk: Chunk) -> str:
    return f"data: {json.dumps(chunk, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def generate(request: Request, ctx: GatewayContext, kind: str) -> Response:
    arrival = time.monotonic()
    request_id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
    request.state.request_id = request_id
    slot = ctx.slots.acquire()  # 429 before any work is spent on the request
    try:
        response = await _generate(request, ctx, kind, arrival, request_id, slot)
    except BaseException:
        slot.release()
        raise
    if not isinstance(response, SSEResponse):
        slot.release()  # a stream holds its slot until the response ends (SSEResponse.on_close)
    return response


async def _parse(
    request: Request, settings: GatewaySettings, kind: str
) -> ChatCompletionRequest | CompletionRequest:
    body = await read_body(request, settings.max_request_body_bytes)
    try:
        if kind == "chat":
            req: ChatCompletionRequest | CompletionRequest = ChatCompletionRequest.model_validate_json(body)
        else:
            req = CompletionRequest.model_validate_json(body)
    except ValidationError as e:
        raise from_validation(e) from None
    if req.model not in (settings.served_model_name, "default"):
        raise model_not_found(req.model)
    return req


async def _generate(
    request: Request, ctx: GatewayContext, kind: str, arrival: float, request_id: str, slot: Slot
) -> Response:
    settings = ctx.settings
    req = await _parse(request, settings, kind)
    try:
        ens_req = (
            chat_request(req, settings)
            if isinstance(req, ChatCompletionRequest)
            else completion_request(req, settings)
        )
    except EngineError as e:
        raise from_engine(e, request_id) from None

    reasoning = None
    if settings.reasoning_start and settings.reasoning_end:
        reasoning = (settings.reasoning_start, settings.reasoning_end, settings.reasoning_starts_inside)
    shaper = ChunkShaper(
        kind="chat" if kind == "chat" else "completion",
        request_id=request_id,
        model=settings.served_model_name,
        created=int(time.time()),
        stops=ens_req.stops,
        include_usage=req.include_usage(),
        reasoning=reasoning,
    )
    stream: ResponseStream = ctx.backend.open(ens_req, request_id)
    if settings.request_timeout_s is not None:
        stream = DeadlineStream(
            stream, arrival + settings.request_timeout_s, settings.request_timeout_s, request_id
        )
    headers = {"X-Request-Id": request_id}
    try:
        first = await until_disconnect(request, stream.next())
    except ClientGone:
        stream.cancel()
        return GoneResponse()
    except (EngineError, ApiError) as e:
        return _error(e, request_id).response(headers=headers)
    except BaseException:
        stream.cancel()
        raise
    if req.stream:
        sse_headers = {
            **headers,
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }  # no proxy buffering
        body = _sse_body(stream, shaper, first, arrival)
        return SSEResponse(body, headers=sse_headers, on_close=slot.release)
    try:
        result = await until_disconnect(request, _collect(stream, shaper, first, arrival))
    except ClientGone:
        return GoneResponse()
    except (EngineError, ApiError) as e:
        return _error(e, request_id).response(headers=headers)
    finally:
        stream.cancel()  # no-op when the stream ended normally
    return JSONResponse(result, headers=headers)


def _error(e: EngineError | ApiError, request_id: str) -> ApiError:
    return e if isinstance(e, ApiError) else from_engine(e, request_id)


async def _responses(
    stream: ResponseStream, shaper: ChunkShaper, first: EnsembleResponse, arrival: float
) -> AsyncIterator[Chunk]:
    """Chunks of one generation, in order; raises EngineError; cancels Triton on a stop-string match.

    After the engine's finish reason the stream is still read to its (empty) final response, so Triton
    completes the request normally instead of seeing a cancellation."""
    resp = first
    while True:
        for chunk in shaper.feed(resp, time.monotonic() - arrival):
            yield chunk
        if shaper.stopped_by_string:
            stream.cancel()
            break
        if resp.final:
            break
        resp = await stream.next()
    for chunk in shaper.end_of_stream(time.monotonic() - arrival):
        yield chunk


async def _collect(
    stream: ResponseStream, shaper: ChunkShaper, first: EnsembleResponse, arrival: float
) -> ChatCompletion | Completion:
    chunks = [c async for c in _responses(stream, shaper, first, arrival)]
    return assemble(shaper, chunks)


async def _sse_body(
    stream: ResponseStream, shaper: ChunkShaper, first: EnsembleResponse, arrival: float
) -> AsyncIterator[str]:
    try:
        try:
            async for chunk in _responses(stream, shaper, first, arrival):
                yield _sse(chunk)
            yield DONE
        except (EngineError, ApiError) as e:
            yield _error(e, shaper.request_id).sse()
        except Exception:
            log.exception("request %s: error while streaming", shaper.request_id)
            yield ApiError(
                500,
                f"internal server error (request {shaper.request_id})",
                type="server_error",
                code="internal_error",
            ).sse()
    finally:
        stream.cancel()
