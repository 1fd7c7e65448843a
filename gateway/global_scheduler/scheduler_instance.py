"""GlobalScheduler: one instance's membership in a topic of instances sharing work through Redis.

Origin side (`submit`): queue the request in Redis under this instance (or, when this instance has a free slot
and an empty queue, lease it to itself in the same script), then stream its chunks back to the client.
Executor side (runner.py): while a slot is free, take work (own queue first, else steal), run it, deliver it.
Housekeeping (`_beat_loop`): heartbeat + lease renewal + absolute load, requeue of expired leases (their next
taker resumes from the ids already streamed), takeover of dead instances' queues.
Redis faults: any failure marks the scheduler unhealthy, new submits fail fast with `SchedulerUnavailable`
(HTTP 503) without touching Redis, and the next successful heartbeat makes it healthy again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import uuid
import zlib
from collections.abc import Callable

from gateway.global_scheduler.local_engine import LocalEngine
from gateway.global_scheduler.origin import RequestStream, Waiter
from gateway.global_scheduler.runner import RunnerMixin
from gateway.global_scheduler.scheduler_errors import QueueFull, SchedulerUnavailable
from gateway.global_scheduler.scheduler_settings import GlobalSchedulerSettings, default_instance_id
from gateway.global_scheduler.store import Lease, RedisStore
from gateway.global_scheduler.work_items import EnsembleInputs, WorkRequest

log = logging.getLogger("gateway.global_scheduler")


@dataclasses.dataclass
class SchedulerStats:
    submitted: int = 0  # requests this instance's clients sent
    rejected: int = 0  # queue full or Redis unavailable
    expired: int = 0  # not started within the TTL
    executed: int = 0  # runs started here (own and stolen)
    executed_own: int = 0
    executed_stolen: int = 0  # runs of other instances' requests
    resumed: int = 0  # runs that continued a request another executor had begun
    withdrawn: int = 0  # optimistic in-process starts undone because Redis queued the request instead
    reaped_leases: int = 0
    dead_instances: int = 0


EventSink = Callable[[str, int], None]


class GlobalScheduler(RunnerMixin):
    def __init__(
        self,
        settings: GlobalSchedulerSettings,
        local_engine: LocalEngine,
        capacity: int,
        instance_id: str | None = None,
        on_event: EventSink | None = None,
    ) -> None:
        """`on_event(name, n)` sees every increment of a `SchedulerStats` field (the gateway's Prometheus
        counter `global_scheduler_events_total`)."""
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.settings = settings
        self.local_engine = local_engine
        self.capacity = capacity
        self.id = instance_id or default_instance_id()
        self.shard = zlib.crc32(self.id.encode()) % settings.load_shards_num
        self.stats = SchedulerStats()
        self._on_event = on_event
        self._store = RedisStore(settings)
        self._healthy = False
        self._busy = 0  # slots in use: running here, or reserved by a submit that may lease to itself
        self._waiters: dict[str, Waiter] = {}
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._slots: set[asyncio.Task[None]] = set()  # runs holding an engine slot
        self._stopping = False
        self._paused_until = 0.0
        self._remote_leases: dict[str, Lease] = {}  # runs here of other origins' requests

    # -- lifecycle -----------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Register with Redis; raises SchedulerUnavailable naming host:port when it cannot be reached."""
        try:
            await self._store.ping()
            await self._beat()
        except SchedulerUnavailable as exc:
            raise SchedulerUnavailable(
                f"global scheduler: cannot reach {self._store.describe()}: {exc.__cause__ or exc}"
            ) from exc
        self._healthy = True
        self._loops = [
            asyncio.create_task(self._guarded(self._beat_loop), name="gs-beat"),
            asyncio.create_task(self._guarded(self._take_loop), name="gs-take"),
        ]
        log.info(
            "global scheduler %s joined topic %r at %s (capacity %d)",
            self.id,
            self.settings.topic,
            self.settings.address,
            self.capacity,
        )

    async def _guarded(self, loop) -> None:  # type: ignore[no-untyped-def]
        # A bug in a loop must not silently stop heartbeats (the instance would look dead) or taking work.
        while not self._stopping:
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("global scheduler %s: %s failed; restarting it", self.id, loop.__name__)
                await asyncio.sleep(self.settings.heartbeat_interval)

    async def stop(self) -> None:
        """Leave: stop taking work and cancel runs here. Other instances' requests running here go back to
        their origins' queues at once (resumed elsewhere); this instance stops counting as alive."""
        # A flag as well as cancel(): a cancellation can be swallowed inside a Redis call (redis-py turns it
        # into a connection error on some paths), and the loops must still end.
        self._stopping = True
        self._wake.set()
        handed = list(self._remote_leases.values())
        tasks = [*self._loops, *self._runs.values(), *self._background]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        with contextlib.suppress(SchedulerUnavailable):
            for lease in handed:
                await self._store.requeue(self.id, lease.request_id, lease.token)
            await self._store.leave(self.id)
        await self._store.close()

    @property
    def healthy(self) -> bool:
        return self._healthy

    def _bump(self, name: str, n: int = 1) -> None:
        if n:
            setattr(self.stats, name, getattr(self.stats, name) + n)
            if self._on_event is not None:
                self._on_event(name, n)

    async def load_table(self) -> dict[str, float]:
        return await self._store.load_table()

    # -- origin side ---------------------------------------------------------------------------------------
    async def submit(self, inputs: EnsembleInputs, request_id: str | None = None) -> RequestStream:
        """Queue a request; returns its chunk stream. Raises Overloaded subclasses (HTTP 503) at once when the
        queue is full or Redis is down; errors of the run itself come out of the stream. The caller must
        read the stream to its end or `close()` it."""
        rid = request_id or uuid.uuid4().hex
        if rid in self._waiters:
            raise ValueError(f"request id {rid!r} is already in flight")
        self._bump("submitted")
        if not self._healthy:
            self._bump("rejected")
            raise SchedulerUnavailable(
                f"global scheduler: {self._store.describe()} is unavailable; retry later"
            )
        req = WorkRequest(rid, self.id, inputs, time.time())
        # With a free slot, lease the request to ourselves in the enqueue script. And unless older requests of
        # ours still wait (the script would queue this one behind them; a withdrawn start wastes a prefill),
        # start the engine before Redis answers: the round trip then hides behind the prefill. Such a start
        # is withdrawn when the script says otherwise (queued, full, Redis down).
        self_take = self._busy < self.capacity
        optimistic = self_take and not any(not w.started and not w.local for w in self._waiters.values())
        waiter = self._waiters[rid] = self._new_waiter(req)
        if optimistic:
            self._start_run(Lease(rid, "", req.to_json(), 0, 0, (), self.id), reserved=False)
        elif self_take:
            self._busy += 1  # reserved until the script answers
        try:
            state, token = await self._enqueue(req, self_take)
        except BaseException as exc:
            self._busy -= self_take and not optimistic
            self._withdraw(rid, optimistic)
            if isinstance(exc, SchedulerUnavailable):
                self._bump("rejected")
                self._set_unhealthy()
            else:  # cancelled while Redis was answering: it may hold the request by now
                self._spawn(self._forget(rid))
            raise
        if state == "leased":
            if optimistic:
                self._count_run(self.id, 0)
            else:
                self._start_run(Lease(rid, token, req.to_json(), 0, 0, (), self.id), reserved=True)
        else:
            self._busy -= self_take and not optimistic
            self._withdraw(rid, optimistic)
            if optimistic:
                self._bump("withdrawn")
        if state == "full":
            self._bump("rejected")
            raise QueueFull(f"the scheduler queue is full ({self.settings.max_size} requests); retry later")
        if state != "leased":
            waiter = self._waiters[rid] = self._new_waiter(req)
            waiter.follow_stream()
            self._wake.set()
        return RequestStream(waiter, self._end, self._count_expired)

    def _new_waiter(self, req: WorkRequest) -> Waiter:
        s = self.settings
        return Waiter(
            self._store,
            self.id,
            req.request_id,
            req.enqueue_time,
            s.ttl,
            watch_interval=2 * s.lease_ttl,
            outage_grace=max(10.0, 3 * s.lease_ttl),
        )

    def _withdraw(self, rid: str, started: bool) -> None:
        """Undo submit's optimistic start: cancel the run (its slot frees itself) and forget the waiter."""
        self._waiters.pop(rid, None)
        run = self._runs.get(rid)
        if started and run is not None:
            run.cancel()

    async def _enqueue(self, req: WorkRequest, self_take: bool) -> tuple[str, str]:
        state, token = await self._store.enqueue(self.id, req.request_id, req.to_json(), self_take)
        if state == "unregistered":  # Redis restarted (or our heartbeat lapsed): register, then retry once
            await self._beat()
            state, token = await self._store.enqueue(self.id, req.request_id, req.to_json(), self_take)
            if state == "unregistered":
                raise SchedulerUnavailable("global scheduler: this instance could not register with Redis")
        return state, token

    def _count_expired(self) -> None:
        self._bump("expired")

    def _end(self, waiter: Waiter, finished: bool) -> None:
        """The origin is done with a request: stop its in-process run unless it finished, forget it."""
        rid = waiter.request_id
        waiter.close()
        if self._waiters.get(rid) is waiter:
            del self._waiters[rid]
        run = self._runs.get(rid)
        if run is not None and waiter.local and not finished:
            run.cancel()  # the client left: stop the local engine request
        self._spawn(self._forget(rid))

    async def _forget(self, rid: str) -> None:
        # Retried across a Redis outage: it also ends the lease of an in-process run, which this instance's
        # heartbeat would otherwise renew forever.
        for _ in range(100):
            try:
                await self._store.forget(self.id, rid)
                return
            except SchedulerUnavailable:
                await asyncio.sleep(self.settings.heartbeat_interval)

    # -- housekeeping --------------------------------------------------------------------------------------
    async def _beat(self) -> None:
        info = json.dumps({"capacity": self.capacity, "busy": self._busy, "shard": self.shard})
        # In hand: runs here, and in-process runs whose stream the client is still reading (their lease
        # ends with the stream).
        active = {*self._runs, *(rid for rid, w in self._waiters.items() if w.local)}
        await self._store.heartbeat(self.id, self.shard, info, sorted(active))

    async def _beat_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.settings.heartbeat_interval)
            try:
                await self._beat()
                expired, dead, _moved = await self._store.reap(self.id)
            except SchedulerUnavailable as exc:
                if self._healthy:
                    log.warning("%s", exc.message)
                self._set_unhealthy()
                continue
            if not self._healthy:
                log.warning("global scheduler %s: %s is back", self.id, self._store.describe())
                self._healthy = True
                self._wake.set()
            self._bump("reaped_leases", expired)
            self._bump("dead_instances", dead)
            if expired or dead:
                log.warning(
                    "global scheduler %s: requeued %d expired leases, took over %d dead instances",
                    self.id,
                    expired,
                    dead,
                )
                self._wake.set()

    def _set_unhealthy(self) -> None:
        self._healthy = False

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
