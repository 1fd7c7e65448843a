"""The origin's side of a request: one `Waiter` per request submitted at this instance.

A waiter delivers the request's chunks to its client in order. They arrive either in-process (this instance
runs its own request: no Redis on the result path) or from the request's Redis result stream (another
instance runs it, or a resumed run). Stream records carry a sequence number; a record already delivered is
skipped, a gap is an error, so a client never sees a chunk twice or misses one. While nothing arrives, the
waiter asks Redis where the request stands: not started within the TTL -> `RequestExpired`; state gone ->
`RequestLost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from gateway.global_scheduler.scheduler_errors import RequestExpired, RequestLost, SchedulerUnavailable
from gateway.global_scheduler.store import RedisStore
from gateway.global_scheduler.work_items import Chunk, error_from_json
from paddlellm.errors import EngineError

log = logging.getLogger("gateway.global_scheduler")
_BLOCK_MS = 1000


class Waiter:
    def __init__(
        self,
        store: RedisStore,
        me: str,
        request_id: str,
        enqueue_time: float,
        ttl: float,
        watch_interval: float,
        outage_grace: float,
    ) -> None:
        self.store, self.me, self.request_id = store, me, request_id
        self.deadline = enqueue_time + ttl
        self.ttl = ttl
        self.watch_interval = watch_interval
        self.outage_grace = outage_grace
        self.local = False  # True once this instance runs the request itself (attempt 0)
        self.started = False
        self.executors: list[str] = []  # who produced the chunks, in order of first appearance
        self._q: asyncio.Queue[Chunk | EngineError] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    # -- feeding -------------------------------------------------------------------------------------------
    def put(self, item: Chunk | EngineError) -> None:
        self._q.put_nowait(item)

    def go_local(self) -> None:
        """This instance took its own request before anyone else: results come in-process from now on."""
        self.local = self.started = True
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None

    def follow_stream(self, next_seq: int = 0) -> None:
        if self._reader is None and not self.local:
            reader = self._read_stream(next_seq)
            self._reader = asyncio.create_task(reader, name=f"gs-read-{self.request_id}")

    def hand_off(self, delivered: int) -> None:
        """The in-process run failed and went back to the queue: follow its stream from chunk `delivered`."""
        self.local = False
        self.follow_stream(delivered)

    async def _read_stream(self, next_seq: int) -> None:
        after, outage_since = "0", 0.0
        while True:
            try:
                records = await self.store.read(self.request_id, after, _BLOCK_MS)
                outage_since = 0.0
            except SchedulerUnavailable as exc:
                outage_since = outage_since or time.monotonic()
                if time.monotonic() - outage_since > self.outage_grace:
                    self.put(exc)
                    return
                await asyncio.sleep(0.2)
                continue
            for rec in records:
                after = rec.stream_id
                if rec.seq < next_seq:
                    continue  # a record delivered already
                if rec.seq > next_seq:
                    self.put(RequestLost(f"request {self.request_id}: result {next_seq} is missing"))
                    return
                next_seq += 1
                if rec.kind == "e":
                    self.put(error_from_json(rec.data))
                    return
                chunk = Chunk.from_json(rec.data)
                self.put(chunk)
                if chunk.finish_reason:
                    return

    # -- consuming -----------------------------------------------------------------------------------------
    async def next(self) -> Chunk:
        """The next chunk; raises the request's EngineError."""
        item = await self._next()
        if isinstance(item, EngineError):
            raise item
        self.started = True
        if item.executor and item.executor not in self.executors:
            self.executors.append(item.executor)
        return item

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None

    async def _next(self) -> Chunk | EngineError:
        """The next item; between items, check on the request in Redis (TTL before start, loss after)."""
        while True:
            timeout = self.watch_interval
            if not self.started:
                timeout = max(0.0, min(timeout, self.deadline - time.time()))
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    return await self._q.get()
            if self.local:
                continue  # the local run ends with a chunk or an error by itself
            expire_now = not self.started and time.time() >= self.deadline
            try:
                state = await self.store.status(self.me, self.request_id, expire_now)
            except SchedulerUnavailable:
                continue  # the stream reader decides when an outage has lasted too long
            if not self._q.empty():
                continue
            if state == "expired":
                return RequestExpired(
                    f"request {self.request_id} was not started within the scheduler TTL "
                    f"({self.ttl:g} s); the server is overloaded, retry later"
                )
            if state == "running":
                self.started = True
            elif state == "lost":
                return RequestLost(
                    f"request {self.request_id}: the scheduler lost its state (Redis restarted?)"
                )
            elif not self.started and expire_now:
                # moved to another queue by a takeover: it cannot be withdrawn atomically; keep waiting, but
                # not forever
                self.deadline = time.time() + self.watch_interval


class RequestStream:
    """One submitted request's chunks, as an async iterator; `close()` when abandoning it (idempotent).
    `on_end(waiter, finished)` runs exactly once: at the finish reason, on an error, or on close."""

    def __init__(
        self, waiter: Waiter, on_end: Callable[[Waiter, bool], None], on_expired: Callable[[], None]
    ) -> None:
        self._waiter, self._on_end, self._on_expired = waiter, on_end, on_expired
        self._closed = False

    @property
    def request_id(self) -> str:
        return self._waiter.request_id

    @property
    def executors(self) -> list[str]:
        """Instances that produced its chunks so far, in order (more than one after a takeover)."""
        return list(self._waiter.executors)

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> Chunk:
        if self._closed:
            raise StopAsyncIteration
        try:
            chunk = await self._waiter.next()
        except BaseException as exc:
            if isinstance(exc, RequestExpired):
                self._on_expired()
            self._close(finished=False)
            raise
        if chunk.finish_reason:
            self._close(finished=True)
        return chunk

    def close(self) -> None:
        self._close(finished=False)

    async def aclose(self) -> None:
        self._close(finished=False)

    def _close(self, finished: bool) -> None:
        if not self._closed:
            self._closed = True
            self._on_end(self._waiter, finished)
