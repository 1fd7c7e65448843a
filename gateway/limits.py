"""Per-request limits of the gateway, each with a clear OpenAI-shaped answer.

- body size: `read_body` answers 413 before parsing (Content-Length is trusted only to refuse early; the
  bytes read are counted too, so a chunked upload cannot exceed the limit either);
- concurrent generations: `StreamSlots` answers 429 with `Retry-After` beyond the limit;
- deadline: `DeadlineStream` ends a request at its deadline with a 504, cancelling its stream, which tells
  the engine to abort it (the backend's `cancel()` contract), so no expired request keeps decoding.

The messages count and max_tokens limits are checked where requests are translated (`gateway/translate.py`).
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from gateway.backend_protocol import ResponseStream
from gateway.openai_errors import ApiError
from gateway.translate import EnsembleResponse

RETRY_AFTER_S = 1  # a slot frees when any stream ends: the next one is usually within a second


async def read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413, f"the request body exceeds this server's limit of {max_bytes} bytes", code="request_too_large"
    )


class Slot:
    """One admitted generation (its `count` engine streams: one per choice); `release()` is idempotent, so
    every exit path may call it."""

    def __init__(self, owner: StreamSlots) -> None:
        self._owner: StreamSlots | None = owner
        self.count = 1

    def grow(self, extra: int) -> None:
        """Hold `extra` more streams (n choices), all or none: a 429 when the limit has no room for them."""
        if extra <= 0 or self._owner is None:
            return
        self._owner.check_room(extra)
        self._owner.active += extra
        self.count += extra

    def release(self) -> None:
        if self._owner is not None:
            self._owner.active -= self.count
            self._owner = None


class StreamSlots:
    """Engine streams in flight for this process's generation requests (one per choice; one event loop: no
    lock needed); 0 = no limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def acquire(self) -> Slot:
        self.check_room(1)
        self.active += 1
        return Slot(self)

    def check_room(self, count: int) -> None:
        if self.limit and self.active + count > self.limit:
            raise ApiError(
                429,
                f"this server is already serving its limit of {self.limit} concurrent requests; "
                f"retry after {RETRY_AFTER_S} s",
                type="requests",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )


class DeadlineStream:
    """A ResponseStream whose `next()` raises a 504 ApiError once the monotonic `deadline` passes; the
    inner stream is cancelled first, so the backend aborts the request wherever it runs."""

    def __init__(self, inner: ResponseStream, deadline: float, timeout_s: float, request_id: str) -> None:
        self.inner, self.deadline, self.timeout_s, self.request_id = inner, deadline, timeout_s, request_id

    @property
    def done(self) -> bool:
        return self.inner.done

    async def next(self) -> EnsembleResponse:
        timer = asyncio.timeout_at(self.deadline)  # the loop's clock is time.monotonic()
        try:
            async with timer:
                return await self.inner.next()
        except TimeoutError:
            if not timer.expired():
                raise
            self.inner.cancel()
            raise ApiError(
                504,
                f"the request did not finish within this server's deadline of {self.timeout_s:g} s and was "
                f"stopped (request {self.request_id})",
                type="server_error",
                code="request_timeout",
            ) from None

    def cancel(self) -> None:
        self.inner.cancel()
