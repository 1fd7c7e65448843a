"""The executor side of a GlobalScheduler: take work while a slot is free, run it, deliver its chunks.

Own queue first, else steal from the most loaded live instance of the topic whose load exceeds
`min_load_score`; run on the LocalEngine; deliver chunks in-process when this instance is the origin, else
append them (fenced by the lease token) to the request's Redis stream. A run whose engine fails is handed back
to the queue (the next taker resumes it) and this instance pauses taking for a lease period.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from typing import Any

from gateway.global_scheduler.local_engine import LocalEngine
from gateway.global_scheduler.origin import Waiter
from gateway.global_scheduler.scheduler_errors import CannotResume, SchedulerUnavailable
from gateway.global_scheduler.scheduler_settings import GlobalSchedulerSettings
from gateway.global_scheduler.store import Lease, RedisStore
from gateway.global_scheduler.work_items import WorkRequest, error_to_json
from paddlellm.errors import EngineDead, EngineError, InvalidRequest

log = logging.getLogger("gateway.global_scheduler")
MAX_ATTEMPTS = 3  # runs of one request whose engine failed, before its client gets the error


class RunnerMixin:
    # State owned by GlobalScheduler.__init__.
    id: str
    settings: GlobalSchedulerSettings
    local_engine: LocalEngine
    capacity: int
    stats: Any
    _store: RedisStore
    _healthy: bool
    _stopping: bool
    _busy: int
    _paused_until: float
    _waiters: dict[str, Waiter]
    _runs: dict[str, asyncio.Task[None]]
    _slots: set[asyncio.Task[None]]
    _remote_leases: dict[str, Lease]
    _wake: asyncio.Event

    def _set_unhealthy(self) -> None: ...
    def _bump(self, name: str, n: int = 1) -> None: ...
    def _spawn(self, coro: Any) -> None: ...

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
        """Run one leased request on the local engine and deliver its chunks (in-process or via Redis)."""
        rid = lease.request_id
        req = WorkRequest.from_json(lease.body, resume=lease.sent_token_ids, attempt=lease.attempt)
        waiter = self._waiters.get(rid) if req.origin == self.id and lease.attempt == 0 else None
        if waiter is not None:
            waiter.go_local()
        if lease.token:  # (an optimistic in-process start is counted once its lease is confirmed)
            self._count_run(req.origin, lease.attempt)
        if waiter is None and req.origin != self.id:
            self._remote_leases[rid] = lease
        seq, done = lease.next_seq, False
        sent: list[int] = []  # ids delivered in-process (so a hand-off can resume after them)
        gen = self.local_engine.run(req)
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
            # Nothing to release here: a final chunk, an error record, a hand-off or the origin's cancel ends
            # a lease in its own script; a lease cut short by a Redis outage or by stop() must outlive this
            # run (it expires, or stop() requeues it) so that the request resumes elsewhere. An in-process
            # run's lease ends with its stream (_forget).
            self._remote_leases.pop(rid, None)

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
        self._bump("executed")
        self._bump("executed_own" if origin == self.id else "executed_stolen")
        self._bump("resumed", int(attempt > 0))

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
