"""The global scheduler against a real redis-server: sharing, topics, failover, TTL, Redis faults.

No assertion here depends on how fast the machine is: tests wait for events (a lease taken, a chunk from an
instance, a cancellation) with deadlines that only guard against hangs. A request that must keep an engine
slot busy asks for HOLD tokens (minutes of work) and is cancelled once it has served its purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from gs_fakes import FakeLocalEngine, RedisServer, expected_ids, free_port, subprocess_env, text_of

from gateway.global_scheduler import (
    Chunk,
    EnsembleInputs,
    GlobalScheduler,
    GlobalSchedulerSettings,
    QueueFull,
    RequestExpired,
    SchedulerUnavailable,
)
from paddlellm.errors import InvalidRequest

N_TOKENS = 12
HOLD = 100_000  # tokens: a request that ends only when cancelled (at the fake's >= 5 ms per token)


def settings(redis: RedisServer, **kw: object) -> GlobalSchedulerSettings:
    base: dict[str, object] = {
        "port": redis.port,
        "topic": "t1",
        "lease_ttl": 1.0,
        "heartbeat_interval": 0.2,
        "min_load_score": 1,
    }
    base.update(kw)
    return GlobalSchedulerSettings(**base)  # type: ignore[arg-type]


async def ask(
    sched: GlobalScheduler, prompt: str, n: int = N_TOKENS, on_chunk: Callable[[Chunk], None] | None = None
) -> tuple[list[int], str, list[str]]:
    """Send one request, read its stream (calling on_chunk on each); -> (token ids, text, executor of each
    chunk)."""
    stream = await sched.submit(EnsembleInputs(prompt=prompt, sampling=json.dumps({"max_tokens": n})))
    ids: list[int] = []
    text, who = "", []
    async for chunk in stream:
        ids.extend(chunk.token_ids)
        text += chunk.text
        who.append(chunk.executor)
        assert chunk.completion_tokens == len(ids)
        if on_chunk is not None:
            on_chunk(chunk)
    return ids, text, who


async def until(cond: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    """Wait for cond() to hold; the deadline only turns a hang into a failure naming `what`."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        await asyncio.sleep(0.01)


async def hold_the_slot(sched: GlobalScheduler) -> asyncio.Task[object]:
    """A request of `sched`'s own that holds its only engine slot (capacity 1) until `release` cancels it;
    returns once `sched` runs it, so later requests queue (and an idle peer steals them)."""
    busy: asyncio.Task[object] = asyncio.create_task(ask(sched, "A's own", HOLD))
    await until(lambda: sched.stats.executed_own == 1, "the instance runs its own request")
    return busy


async def release(busy: asyncio.Task[object]) -> None:
    busy.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await busy


async def leftover_state(redis: RedisServer) -> list[str]:
    import redis.asyncio as aioredis

    r = aioredis.Redis(port=redis.port)
    try:
        keys = [k.decode() for k in await r.keys("pllm:*")]
        per_request = [k for k in keys if any(f":{kind}:" in k for kind in ("req", "res", "toks", "q"))]
        leases = await r.zrange("pllm:{t1}:leases", 0, -1)
        held = [k for k in keys if ":held:" in k and await r.scard(k)]
        return per_request + [f"lease {x!r}" for x in leases] + held
    finally:
        await r.aclose()


def check_answer(prompt: str, ids: list[int], text: str, n: int = N_TOKENS) -> None:
    want = expected_ids(prompt, n)
    assert ids == want, f"{prompt}: tokens repeated or skipped"
    assert text == text_of(want)


def test_single_instance_runs_its_own_requests(redis_server: RedisServer) -> None:
    async def main() -> None:
        a = GlobalScheduler(settings(redis_server), FakeLocalEngine(), capacity=2, instance_id="A")
        await a.start()
        try:
            results = await asyncio.gather(*(ask(a, f"p{i}") for i in range(6)))
            for i, (ids, text, who) in enumerate(results):
                check_answer(f"p{i}", ids, text)
                assert set(who) == {"A"}
            assert a.stats.executed_own == 6 and a.stats.executed_stolen == 0
        finally:
            await a.stop()

    asyncio.run(main())


def test_idle_instance_steals_from_a_loaded_one_and_other_topics_take_none(redis_server: RedisServer) -> None:
    async def main() -> None:
        ex = {k: FakeLocalEngine(0.005) for k in "ABC"}
        a = GlobalScheduler(settings(redis_server), ex["A"], capacity=4, instance_id="A")
        b = GlobalScheduler(settings(redis_server), ex["B"], capacity=4, instance_id="B")
        c = GlobalScheduler(settings(redis_server, topic="other"), ex["C"], capacity=4, instance_id="C")
        for s in (a, b, c):
            await s.start()
        try:
            results = await asyncio.gather(*(ask(a, f"req {i}") for i in range(40)))
            for i, (ids, text, _who) in enumerate(results):
                check_answer(f"req {i}", ids, text)
            by_b = sum(1 for _i, _t, who in results if set(who) == {"B"})
            assert by_b >= 12, f"B ran {by_b}/40"
            assert b.stats.executed_stolen == by_b
            assert c.stats.executed == 0 and ex["C"].runs == 0
            assert a.stats.executed_own + b.stats.executed_stolen == 40
            # Background cleanup (forget, release) runs after the streams end: wait for it, not a fixed time.
            await until(lambda: a._busy == b._busy == 0, "the engine slots are free again (else: leaked)")
            left: list[str] = ["?"]

            async def clean() -> bool:
                left[:] = await leftover_state(redis_server)
                return not left

            deadline = time.monotonic() + 60
            while not await clean():
                assert time.monotonic() < deadline, f"request state left in Redis: {left}"
                await asyncio.sleep(0.05)
        finally:
            for s in (a, b, c):
                await s.stop()

    asyncio.run(main())


def test_errors_of_a_stolen_request_reach_the_origin_typed(redis_server: RedisServer) -> None:
    async def main() -> None:
        a = GlobalScheduler(
            settings(redis_server, min_load_score=0), FakeLocalEngine(0.02), capacity=1, instance_id="A"
        )
        b = GlobalScheduler(
            settings(redis_server, min_load_score=0), FakeLocalEngine(), capacity=1, instance_id="B"
        )
        await a.start()
        busy = await hold_the_slot(a)
        await b.start()
        try:
            with pytest.raises(InvalidRequest, match="prompt 'bad' is not allowed") as info:
                await asyncio.wait_for(ask(a, "bad"), 60)
            assert info.value.param == "prompt"
            assert b.stats.executed_stolen == 1, "the error must come from B, through Redis"
            await release(busy)
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(main())


def test_kill_9_of_an_executing_instance_loses_nothing(redis_server: RedisServer, tmp_path: Path) -> None:
    script = Path(__file__).with_name("instance_main.py")
    b = subprocess.Popen(
        [sys.executable, str(script), str(redis_server.port), "t1", "B", "4", "0.02", "1.0"],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert b.stdout is not None and b.stdout.readline().strip() == "READY"

        async def main() -> None:
            a = GlobalScheduler(settings(redis_server), FakeLocalEngine(0.02), capacity=4, instance_id="A")
            await a.start()
            try:
                early_on_b: list[Chunk] = []  # B's chunks with most of their stream still to come

                def note(chunk: Chunk) -> None:
                    if chunk.executor == "B" and chunk.completion_tokens <= 5:
                        early_on_b.append(chunk)

                tasks = [asyncio.create_task(ask(a, f"req {i}", 20, note)) for i in range(40)]
                await until(lambda: early_on_b, "B streams a request")  # then kill it mid-stream
                b.kill()
                t0 = time.monotonic()
                results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
                for i, (ids, text, _who) in enumerate(results):
                    check_answer(f"req {i}", ids, text, 20)
                resumed = [who for _i, _t, who in results if who[0] == "B" and who[-1] == "A"]
                assert resumed, "no stream began on B and finished on A"
                assert a.stats.resumed >= len(resumed)
                print(f"after kill: {len(resumed)} streams resumed, all done in {time.monotonic() - t0:.1f}s")
            finally:
                await a.stop()

        asyncio.run(main())
    finally:
        b.kill()
        b.wait(10)


def test_request_not_started_within_ttl_gets_a_clear_error(redis_server: RedisServer) -> None:
    async def main() -> None:
        a = GlobalScheduler(
            settings(redis_server, ttl=1.0), FakeLocalEngine(0.1), capacity=1, instance_id="A"
        )
        await a.start()
        try:
            busy = await hold_the_slot(a)
            t0 = time.time()  # the TTL counts from submit on the wall clock (WorkRequest.enqueue_time)
            with pytest.raises(RequestExpired, match="not started within the scheduler TTL"):
                await asyncio.wait_for(ask(a, "waits"), 60)
            # Refused while the only slot was still taken (not served after it), and not before its TTL: a
            # lower bound, which load can only make easier to meet.
            assert not busy.done()
            assert time.time() - t0 >= 1.0
            assert a.stats.expired == 1
            await release(busy)
        finally:
            await a.stop()

    asyncio.run(main())


def test_queue_bounded_by_max_size(redis_server: RedisServer) -> None:
    async def main() -> None:
        a = GlobalScheduler(
            settings(redis_server, max_size=1), FakeLocalEngine(0.05), capacity=1, instance_id="A"
        )
        await a.start()
        try:
            sampling = json.dumps({"max_tokens": N_TOKENS})
            first = await a.submit(EnsembleInputs(prompt="one", sampling=sampling))  # runs
            second = await a.submit(EnsembleInputs(prompt="two", sampling=sampling))  # waits in the queue
            with pytest.raises(QueueFull, match=r"queue is full \(1 requests\)"):
                await a.submit(EnsembleInputs(prompt="three", sampling=sampling))
            for prompt, stream in (("one", first), ("two", second)):
                ids = [t async for c in stream for t in c.token_ids]
                check_answer(prompt, ids, text_of(ids))
        finally:
            await a.stop()

    asyncio.run(main())


def test_client_leaving_cancels_a_remote_run(redis_server: RedisServer) -> None:
    async def main() -> None:
        ex_b = FakeLocalEngine(0.05)
        a = GlobalScheduler(
            settings(redis_server, min_load_score=0), FakeLocalEngine(0.05), capacity=1, instance_id="A"
        )
        b = GlobalScheduler(settings(redis_server, min_load_score=0), ex_b, capacity=1, instance_id="B")
        await a.start()
        busy = await hold_the_slot(a)
        await b.start()
        try:
            sampling = json.dumps({"max_tokens": HOLD})  # the run can end only by being cancelled
            stream = await a.submit(EnsembleInputs(prompt="left early", sampling=sampling))
            first = await stream.__anext__()
            assert first.executor == "B"
            await stream.aclose()
            await until(lambda: ex_b.cancelled, "B cancels the run its client left")
            assert ex_b.cancelled == 1
            await release(busy)
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(main())


def test_redis_unreachable_at_start_names_the_address() -> None:
    port = free_port()

    async def main() -> None:
        s = GlobalSchedulerSettings(port=port, connect_timeout=0.5)
        with pytest.raises(SchedulerUnavailable, match=f"127.0.0.1:{port}"):
            await GlobalScheduler(s, FakeLocalEngine(), capacity=1, instance_id="A").start()

    asyncio.run(main())


def test_redis_lost_fails_fast_then_recovers(redis_server: RedisServer) -> None:
    async def main() -> None:
        a = GlobalScheduler(settings(redis_server), FakeLocalEngine(), capacity=2, instance_id="A")
        await a.start()
        try:
            check_answer("before", *(await ask(a, "before"))[:2])
            enqueue, tried = a._store.enqueue, 0

            async def counting_enqueue(*args, **kwargs):  # type: ignore[no-untyped-def]
                nonlocal tried
                tried += 1
                return await enqueue(*args, **kwargs)

            a._store.enqueue = counting_enqueue  # type: ignore[method-assign]
            redis_server.stop()
            for _ in range(5):
                with pytest.raises(SchedulerUnavailable, match="is unavailable"):
                    await asyncio.wait_for(ask(a, "during"), 30)
            # Fail fast: once one failure (a submit's or the heartbeat's) marks the scheduler unhealthy, later
            # submits are refused without a round trip to Redis.
            assert tried <= 1, f"{tried} submits waited on Redis"
            a._store.enqueue = enqueue  # type: ignore[method-assign]
            redis_server.start()
            await until(lambda: a.healthy, "recovery after Redis came back")
            check_answer("after", *(await ask(a, "after"))[:2])
        finally:
            await a.stop()

    asyncio.run(main())


def test_a_stolen_run_stops_when_its_origin_dies(redis_server: RedisServer) -> None:
    async def main() -> None:
        ex_b = FakeLocalEngine(0.05)
        s = settings(redis_server, min_load_score=0)
        a = GlobalScheduler(s, FakeLocalEngine(0.05), capacity=1, instance_id="A")
        b = GlobalScheduler(s, ex_b, capacity=1, instance_id="B")
        await a.start()
        busy = await hold_the_slot(a)
        await b.start()
        try:
            sampling = json.dumps({"max_tokens": HOLD})  # the run can end only by being cancelled
            stream = await a.submit(EnsembleInputs(prompt="orphan", sampling=sampling))
            assert (await stream.__anext__()).executor == "B"
            await release(busy)
            a._stopping = True  # A dies without a word: its heartbeat stops, its alive key expires
            for task in a._loops:
                task.cancel()
            await until(lambda: ex_b.cancelled, "B stops the run of a dead origin", timeout=30 * s.lease_ttl)
            assert ex_b.cancelled == 1, "B kept running a request nobody will read"
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(main())


def test_a_failing_engine_hands_a_stolen_request_back(redis_server: RedisServer) -> None:
    async def main() -> None:
        # A long lease: B's pause after its engine failed (one lease period) outlasts A taking the request.
        s = settings(redis_server, min_load_score=0, lease_ttl=10.0)
        a = GlobalScheduler(s, FakeLocalEngine(0.01), capacity=1, instance_id="A")
        b = GlobalScheduler(s, FakeLocalEngine(0.01, fail_after=3), capacity=1, instance_id="B")
        await a.start()
        busy = await hold_the_slot(a)
        await b.start()
        try:
            # B has stolen it once its first chunk arrives: then A's slot is freed for the resume.
            free_a = lambda chunk: busy.cancel()  # noqa: E731
            ids, text, who = await asyncio.wait_for(ask(a, "flaky one", 20, free_a), 60)
            check_answer("flaky one", ids, text, 20)
            assert who[:3] == ["B"] * 3 and who[3:] == ["A"] * 17, who
            assert a.stats.resumed == 1
            await release(busy)
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(main())


def test_a_failing_engine_hands_its_own_request_to_a_peer(redis_server: RedisServer) -> None:
    async def main() -> None:
        s = settings(redis_server, min_load_score=0)
        a = GlobalScheduler(s, FakeLocalEngine(0.01, fail_after=4), capacity=1, instance_id="A")
        b = GlobalScheduler(s, FakeLocalEngine(0.01), capacity=1, instance_id="B")
        await a.start()
        await b.start()
        try:
            ids, text, who = await asyncio.wait_for(ask(a, "flaky two", 20), 60)
            check_answer("flaky two", ids, text, 20)
            assert who[:4] == ["A"] * 4 and who[4:] == ["B"] * 16, who
            assert b.stats.resumed == 1
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(main())


def test_a_stopping_instance_hands_its_stolen_runs_back(redis_server: RedisServer) -> None:
    async def main() -> None:
        # Leases that outlive the test: only the hand-back can move the request in time.
        s = settings(redis_server, min_load_score=0, lease_ttl=600.0, heartbeat_interval=0.2)
        a = GlobalScheduler(s, FakeLocalEngine(0.01), capacity=1, instance_id="A")
        b = GlobalScheduler(s, FakeLocalEngine(0.01), capacity=1, instance_id="B")
        await a.start()
        busy = await hold_the_slot(a)
        await b.start()
        try:
            stream = await a.submit(EnsembleInputs(prompt="moved", sampling='{"max_tokens": 40}'))
            ids = list((await stream.__anext__()).token_ids)
            await b.stop()
            await release(busy)  # A's slot is free for the request B handed back

            async def rest() -> None:
                async for chunk in stream:
                    ids.extend(chunk.token_ids)

            await asyncio.wait_for(rest(), 60)
            check_answer("moved", ids, text_of(ids), 40)
            assert stream.executors[0] == "B" and stream.executors[-1] == "A"
            assert a.stats.reaped_leases == 0, "the request moved by lease expiry, not by B's hand-back"
        finally:
            await a.stop()

    asyncio.run(main())


def test_a_run_cut_by_a_redis_error_resumes_elsewhere(redis_server: RedisServer) -> None:
    async def main() -> None:
        s = settings(redis_server, min_load_score=0)
        a = GlobalScheduler(s, FakeLocalEngine(0.01), capacity=1, instance_id="A")
        b = GlobalScheduler(s, FakeLocalEngine(0.01), capacity=1, instance_id="B")
        await a.start()
        busy = await hold_the_slot(a)
        await b.start()
        push = b._store.push
        calls = 0

        async def flaky_push(*args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            if calls == 5:  # B loses Redis for one write, mid-stream; its heartbeat keeps working
                raise SchedulerUnavailable("injected")
            return await push(*args, **kwargs)

        b._store.push = flaky_push  # type: ignore[method-assign]
        try:
            # B has stolen it once its first chunk arrives: then A's slot is freed (either may resume it).
            free_a = lambda chunk: busy.cancel()  # noqa: E731
            ids, text, who = await asyncio.wait_for(ask(a, "cut", 30, free_a), 60)
            check_answer("cut", ids, text, 30)
            # The requeued run may go to A or back to B (B is alive: it only lost one write), whichever
            # claims it first; either way it continues after the 4 ids already streamed, not from scratch.
            assert who[:4] == ["B"] * 4 and set(who[4:]) <= {"A", "B"}, who
            assert a.stats.reaped_leases + b.stats.reaped_leases == 1
            assert a.stats.resumed + b.stats.resumed == 1
            await release(busy)
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(main())
