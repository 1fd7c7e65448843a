"""GlobalScheduler: one instance's membership in a topic of instances sharing work through Redis.

Origin side (`submit`): queue the request in Redis under this instance (or, when this instance has a free slot
and an empty queue, lease it to itself in the same script), then stream its chunks back to the client.
Executor side (`_take_loop`): while a slot is free, lease a request from the own queue, else steal one from
the most loaded live instance of the topic whose load exceeds `min_load_score`; run it on the local Executor;
deliver chunks in-process when this instance is the origin, else append them (fenced by the lease token) to
the request's Redis stream. Housekeeping (`_beat_loop`): heartbeat + lease renewal + absolute load, requeue of
expired leases (their next taker resumes from the ids already streamed), takeover of dead instances' queues.
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

from gateway.global_scheduler.errors import CannotResume, QueueFull, SchedulerUnavailable
from gateway.global_scheduler.executor import Executor
from gateway.global_scheduler.messages import EnsembleInputs, WorkRequest, error_to_json
from gateway.global_scheduler.origin import RequestStream, Waiter
from gateway.global_scheduler.settings import GlobalSchedulerSettings, default_instance_id
from gateway.global_scheduler.store import Lease, RedisStore
from paddlellm.errors import EngineDead, EngineError, InvalidRequest

log = logging.getLogger("gateway.global_scheduler")
MAX_ATTEMPTS = 3  # runs of one request whose engine failed, before its client gets the error


@dataclasses.dataclass
class SchedulerStats:
    submitted: int = 0  # requests this instance's clients sent
    rejected: int = 0  # queue full or Redis unavailable
    expired: int = 0  # not started within the TTL
    executed: int = 0  # runs started here (own and stolen)
    executed_own: int = 0
    executed_stolen: int = 0  # runs of other instances' requests
    resumed: int = 0  # runs that continued a request another executor had begun
    reaped_leases: int = 0
    dead_instances: int = 0


class GlobalScheduler:
    def __init__(
        self,
        settings: GlobalSchedulerSettings,
        executor: Executor,
        capacity: int,
        instance_id: str | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.settings = settings
        self.executor = executor
        self.capacity = capacity
        self.id = instance_id or default_instance_id()
        self.shard = zlib.crc32(self.id.encode()) % settings.load_shards_num
        self.stats = SchedulerStats()
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
        """Leave: stop taking work, cancel local runs. Leases left behind expire and resume elsewhere."""
        # A flag as well as cancel(): a cancellation can be swallowed inside a Redis call (redis-py turns it
        # into a connection error on some paths), and the loops must still end.
        self._stopping = True
        self._wake.set()
        tasks = [*self._loops, *self._runs.values(), *self._background]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        await self._store.close()

    @property
    def healthy(self) -> bool:
        return self._healthy

    def stats_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self.stats)

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
        self.stats.submitted += 1
        if not self._healthy:
            self.stats.rejected += 1
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
                self.stats.rejected += 1
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
        if state == "full":
            self.stats.rejected += 1
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
        self.stats.expired += 1

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

    # -- executor side -------------------------------------------------------------------------------------
    async def _take_loop(self) -> None:
        while not self._stopping:
            if self._busy >= self.capacity or not self._healthy or time.monotonic() < self._paused_until:
                await self._wait_wake(self.settings.steal_interval)
                continue
            try:
                lease = await self._store.take(self.id, allow_steal=True)
            except SchedulerUnavailable:
                self._set_unhealthy()
                continue
            if lease is None:
                await self._wait_wake(self.settings.steal_interval)
                continue
            self._start_run(lease, reserved=False)

    async def _wait_wake(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):  # not wait_for: on 3.11 it can swallow a cancellation
                await self._wake.wait()
        self._wake.clear()

    def _start_run(self, lease: Lease, reserved: bool) -> None:
        if not reserved:
            self._busy += 1
        rid = lease.request_id
        task = asyncio.create_task(self._execute(lease), name=f"gs-run-{rid}")
        self._runs[rid] = task
        self._slots.add(task)
        # A callback, not the run's own `finally`: a task cancelled before its first step never runs that.
        task.add_done_callback(lambda t: self._run_done(rid, t))

    async def _execute(self, lease: Lease) -> None:
        """Run one leased request on the local executor and deliver its chunks (in-process or via Redis)."""
        rid = lease.request_id
        req = WorkRequest.from_json(lease.body, resume=lease.sent_token_ids, attempt=lease.attempt)
        waiter = self._waiters.get(rid) if req.origin == self.id and lease.attempt == 0 else None
        if waiter is not None:
            waiter.go_local()
        if lease.token:  # (an optimistic in-process start is counted once its lease is confirmed)
            self._count_run(req.origin, lease.attempt)
        seq, done = lease.next_seq, False
        sent: list[int] = []  # ids delivered in-process (so a hand-off can resume after them)
        gen = self.executor.run(req)
        try:
            async for chunk in gen:
                chunk = dataclasses.replace(chunk, executor=self.id)
                done = bool(chunk.finish_reason)
                if done:
                    # The engine is done with it: free the slot before the client hears, so the client's
                    # next request finds it free and takes the in-process path.
                    self._free_slot(asyncio.current_task())
                if waiter is not None:
                    waiter.put(chunk)
                    sent.extend(chunk.token_ids)
                    seq += 1
                else:
                    state = await self._store.push(
                        self.id, lease, seq, "c", chunk.to_json(), chunk.token_ids, final=done
                    )
                    seq += 1
                    if state != "ok":
                        log.info("request %s: stopping its run here (%s)", rid, state)
                        return
                if done:
                    return
            raise EngineDead(f"request {rid}: the engine ended the stream without a finish reason")
        except SchedulerUnavailable as exc:
            # Results cannot be delivered; the lease expires and the request resumes once Redis is back.
            log.warning("request %s: %s", rid, exc.message)
        except (InvalidRequest, CannotResume) as exc:  # the request's fault, or no engine could do better
            await self._fail(lease, waiter, seq, exc)
        except Exception as exc:
            # This instance's engine failed (died, Triton went away...), not the request: hand the request on.
            if isinstance(exc, EngineError):
                log.warning("request %s: the engine failed here: %s", rid, exc.message)
            else:
                log.exception("request %s: executor failed", rid)
                exc = EngineDead(f"internal error (request id {rid})")
            self._pause_taking()
            handed = False
            if lease.attempt + 1 < MAX_ATTEMPTS:
                try:
                    handed = await self._hand_off(lease, waiter, sent, seq)
                except Exception:  # never leave the client waiting on a bug here
                    log.exception("request %s: hand-off failed", rid)
            if not handed:
                await self._fail(lease, waiter, seq, exc)
        finally:
            await gen.aclose()  # type: ignore[attr-defined]
            if waiter is None and not done:
                self._spawn(self._release(lease))  # (an in-process run's lease ends with its stream: _forget)

    async def _hand_off(self, lease: Lease, waiter: Waiter | None, sent: list[int], seq: int) -> bool:
        """Give a failed run's request back to the queue for another instance to resume; False if it was not
        ours to give (or Redis is down)."""
        rid = lease.request_id
        try:
            if waiter is None:
                return await self._store.requeue(self.id, rid, lease.token)
            if not await self._store.requeue(self.id, rid, "", sent, seq):
                return False
        except SchedulerUnavailable:
            return False
        waiter.hand_off(seq)
        self._wake.set()
        return True

    def _pause_taking(self) -> None:
        # A failing engine must not take the work straight back: stop taking for a lease period.
        self._paused_until = time.monotonic() + self.settings.lease_ttl

    def _count_run(self, origin: str, attempt: int) -> None:
        st = self.stats
        st.executed += 1
        st.executed_own += origin == self.id
        st.executed_stolen += origin != self.id
        st.resumed += attempt > 0

    def _free_slot(self, task: asyncio.Task[None] | None) -> None:
        # Once per run: at its finish reason, or when its task ends.
        if task in self._slots:
            self._slots.discard(task)  # type: ignore[arg-type]
            self._busy -= 1
            self._wake.set()

    def _run_done(self, rid: str, task: asyncio.Task[None]) -> None:
        self._free_slot(task)
        if self._runs.get(rid) is task:  # (a withdrawn run and a later run of the same request may overlap)
            del self._runs[rid]

    async def _fail(self, lease: Lease, waiter: Waiter | None, seq: int, exc: EngineError) -> None:
        if waiter is not None:
            waiter.put(exc)
            return
        with contextlib.suppress(SchedulerUnavailable):
            await self._store.push(self.id, lease, seq, "e", error_to_json(exc), (), final=True)

    async def _release(self, lease: Lease) -> None:
        # Retried across a Redis outage: a lease left behind would be taken over and run again.
        for _ in range(100):
            try:
                await self._store.release(self.id, lease)
                return
            except SchedulerUnavailable:
                await asyncio.sleep(self.settings.heartbeat_interval)

    # -- housekeeping --------------------------------------------------------------------------------------
    async def _beat(self) -> None:
        info = json.dumps({"capacity": self.capacity, "busy": self._busy, "shard": self.shard})
        await self._store.heartbeat(self.id, self.shard, info)

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
            self.stats.reaped_leases += expired
            self.stats.dead_instances += dead
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
