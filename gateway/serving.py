"""One generation request, from HTTP body to SSE stream or JSON response.

Flow: take a concurrency slot (429 past the limit) -> read the body within its size limit (413) -> validate
(pydantic, then SamplingParams) -> open the Triton stream (under the request's deadline, if one is set) ->
wait for its first response -> only then commit to HTTP 200. Errors before that point are ordinary 4xx/5xx
responses; after it they are one SSE error chunk and `[DONE]`. A stop-string match, a client disconnect or
the deadline cancels the Triton stream, and the engine is told to abort the request and free its KV blocks.

`n` choices are n engine requests (`{id}-{i}`), each holding a concurrency slot: the first alone until its
first response (so the prompt is prefilled once and the others find it in the prefix cache), then the
others; their chunks are merged as they come, each with its choice's index. Anything that ends one (a
disconnect, the deadline, an error) cancels them all. One choice takes the single-stream path, no task.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import httpx
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.backend_protocol import GenerationBackend, ResponseStream
from gateway.chunk_shaper import Chunk, ChunkShaper, assemble, usage_chunk
from gateway.image_parts import fetch_remote_images
from gateway.limits import DeadlineStream, Slot, StreamSlots, read_body
from gateway.logprobs import parse as parse_logprobs
from gateway.openai_errors import ApiError, from_engine, from_validation, model_not_found
from gateway.openai_schema import ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest
from gateway.settings import GatewaySettings
from gateway.translate import (
    EnsembleRequest,
    EnsembleResponse,
    chat_request,
    choice_requests,
    completion_request,
    shown_logprobs,
)
from paddlellm.errors import EngineError

log = logging.getLogger("gateway")
T = TypeVar("T")
DONE = "data: [DONE]\n\n"


@dataclass
class GatewayContext:
    settings: GatewaySettings
    backend: GenerationBackend
    slots: StreamSlots
    media: httpx.AsyncClient | None = None  # fetches allowed image URLs (None: --allowed-media-domains empty)


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
        slot.release()  # a stream holds its slots until the response ends (SSEResponse.on_close)
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


@dataclass
class _Choice:
    """One choice of the answer: its engine stream, its shaper and its first response."""

    stream: ResponseStream
    shaper: ChunkShaper
    first: EnsembleResponse | None = None


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
    if ens_req.remote_images and ctx.media is not None:  # allowed image URLs (gateway/image_parts.py)
        try:
            fetched = await until_disconnect(
                request, fetch_remote_images(ens_req.messages, ens_req.remote_images, ctx.media, settings)
            )
        except ClientGone:
            return GoneResponse()
        except EngineError as e:
            raise from_engine(e, request_id) from None
        ens_req = dataclasses.replace(ens_req, messages=fetched, remote_images=())
    engine_requests = choice_requests(ens_req)
    slot.grow(len(engine_requests) - 1)  # each choice holds an engine stream: 429 when they do not fit

    reasoning = None
    if settings.reasoning_start and settings.reasoning_end:
        reasoning = (settings.reasoning_start, settings.reasoning_end, settings.reasoning_starts_inside)
    shown = shown_logprobs(req)
    created = int(time.time())

    def choice(index: int, engine_request: EnsembleRequest) -> _Choice:
        rid = request_id if len(engine_requests) == 1 else f"{request_id}-{index}"
        stream: ResponseStream = ctx.backend.open(engine_request, rid)
        if settings.request_timeout_s is not None:
            timeout = settings.request_timeout_s
            stream = DeadlineStream(stream, arrival + timeout, timeout, rid)
        shaper = ChunkShaper(
            kind="chat" if kind == "chat" else "completion",
            request_id=request_id,
            model=settings.served_model_name,
            created=created,
            stops=ens_req.stops,
            include_usage=req.include_usage(),
            reasoning=reasoning,
            index=index,
            tool_parser=ens_req.tool_parser,
            tool_names=ens_req.tool_names,
            **shown,
        )
        return _Choice(stream, shaper)

    # The first choice alone until its first response: then the prompt's KV blocks are in the prefix cache,
    # and the other choices (opened now) read them instead of prefilling the prompt again.
    choices = [choice(0, engine_requests[0])]
    headers = {"X-Request-Id": request_id}
    try:
        choices[0].first = await until_disconnect(request, choices[0].stream.next())
        if len(engine_requests) > 1:
            choices += [choice(i, r) for i, r in enumerate(engine_requests[1:], start=1)]
            # Every first response (or error) is awaited, so no read is left running unretrieved.
            reads = asyncio.gather(*(c.stream.next() for c in choices[1:]), return_exceptions=True)
            firsts = await until_disconnect(request, reads)
            for c, first in zip(choices[1:], firsts, strict=True):
                if isinstance(first, BaseException):
                    raise first
                c.first = first
                c.shaper.prompt_entries = _prompt_entries(choices[0].first)
    except ClientGone:
        _cancel(choices)
        return GoneResponse()
    except (EngineError, ApiError) as e:
        _cancel(choices)
        return _error(e, request_id).response(headers=headers)
    except BaseException:
        _cancel(choices)
        raise
    if req.stream:
        sse_headers = {
            **headers,
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }  # no proxy buffering
        body = _sse_body(choices, arrival)
        return SSEResponse(body, headers=sse_headers, on_close=slot.release)
    try:
        result = await until_disconnect(request, _collect(choices, arrival))
    except ClientGone:
        return GoneResponse()
    except (EngineError, ApiError) as e:
        return _error(e, request_id).response(headers=headers)
    finally:
        _cancel(choices)  # no-op for streams that ended normally
    return JSONResponse(result, headers=headers)


def _prompt_entries(first: EnsembleResponse | None) -> list[Any] | None:
    return parse_logprobs(first.logprobs)[1] if first is not None and first.logprobs else None


def _cancel(choices: list[_Choice]) -> None:
    for c in choices:
        c.stream.cancel()


def _error(e: EngineError | ApiError, request_id: str) -> ApiError:
    return e if isinstance(e, ApiError) else from_engine(e, request_id)


async def _responses(c: _Choice, arrival: float) -> AsyncIterator[Chunk]:
    """Chunks of one choice, in order; raises EngineError; cancels Triton on a stop-string match.

    After the engine's finish reason the stream is still read to its (empty) final response, so Triton
    completes the request normally instead of seeing a cancellation."""
    stream, shaper = c.stream, c.shaper
    assert c.first is not None
    resp = c.first
    while True:
        for chunk in shaper.feed(resp, time.monotonic() - arrival):
            yield chunk
        if shaper.stopped_by_string:
            stream.cancel()
            break
        if resp.final:
            break
        resp = await stream.next()
    shaper.check_finished()


async def _merged(choices: list[_Choice], arrival: float) -> AsyncIterator[Chunk]:
    """The chunks of n choices as they come (each choice's in order; ties in index order)."""
    sources = [_responses(c, arrival) for c in choices]
    reads: dict[asyncio.Future[Chunk], int] = {
        asyncio.ensure_future(anext(src)): i for i, src in enumerate(sources)
    }
    try:
        while reads:
            done, _ = await asyncio.wait(reads, return_when=asyncio.FIRST_COMPLETED)
            for read in sorted(done, key=reads.__getitem__):
                i = reads.pop(read)
                try:
                    chunk = read.result()
                except StopAsyncIteration:
                    continue
                yield chunk
                reads[asyncio.ensure_future(anext(sources[i]))] = i
    finally:
        for read in reads:
            read.cancel()


def _chunks(choices: list[_Choice], arrival: float) -> AsyncIterator[Chunk]:
    """Every chunk of the answer; one choice without a usage chunk is its own stream (no extra layer)."""
    if len(choices) == 1 and not choices[0].shaper.include_usage:
        return _responses(choices[0], arrival)
    return _all_chunks(choices, arrival)


async def _all_chunks(choices: list[_Choice], arrival: float) -> AsyncIterator[Chunk]:
    source = _responses(choices[0], arrival) if len(choices) == 1 else _merged(choices, arrival)
    async for chunk in source:
        yield chunk
    shapers = [c.shaper for c in choices]
    if shapers[0].include_usage:
        yield usage_chunk(shapers)


async def _collect(choices: list[_Choice], arrival: float) -> ChatCompletion | Completion:
    chunks = [c async for c in _chunks(choices, arrival)]
    return assemble([c.shaper for c in choices], chunks)


async def _sse_body(choices: list[_Choice], arrival: float) -> AsyncIterator[str]:
    request_id = choices[0].shaper.request_id
    try:
        try:
            async for chunk in _chunks(choices, arrival):
                yield _sse(chunk)
            yield DONE
        except (EngineError, ApiError) as e:
            yield _error(e, request_id).sse()
        except Exception:
            log.exception("request %s: error while streaming", request_id)
            yield ApiError(
                500,
                f"internal server error (request {request_id})",
                type="server_error",
                code="internal_error",
            ).sse()
    finally:
        _cancel(choices)
