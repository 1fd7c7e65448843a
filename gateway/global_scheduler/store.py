"""RedisStore: typed calls onto the Lua scripts in `scripts.py`; Redis failures become `SchedulerUnavailable`.

The client never retries by itself and connects with a short timeout, so a Redis outage surfaces at once and
the scheduler can fail new requests fast (503) instead of stalling them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.global_scheduler import scripts
from gateway.global_scheduler.scheduler_errors import SchedulerUnavailable
from gateway.global_scheduler.scheduler_settings import GlobalSchedulerSettings


@dataclass(frozen=True)
class Lease:
    request_id: str
    token: str  # fencing token "instance#epoch": only its holder may write the request's results
    body: str
    attempt: int
    next_seq: int
    sent_token_ids: tuple[int, ...]
    source: str  # the queue it came from (this instance's own, or the instance it was stolen from)


@dataclass(frozen=True)
class Record:
    seq: int
    kind: str  # "c" chunk, "e" error
    data: str
    stream_id: str


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def now_ms() -> int:
    return int(time.time() * 1000)


class RedisStore:
    def __init__(self, settings: GlobalSchedulerSettings) -> None:
        self.settings = settings
        self.prefix = f"pllm:{{{settings.topic}}}:"
        self._client = aioredis.Redis(
            host=settings.host,
            port=settings.port,
            db=settings.db,
            password=settings.password,
            socket_connect_timeout=settings.connect_timeout,
            socket_timeout=max(3.0, settings.connect_timeout),
            retry=Retry(NoBackoff(), 0),
            decode_responses=False,
            health_check_interval=0,
        )
        self._scripts = {
            name: self._client.register_script(getattr(scripts, name))
            for name in (
                "ENQUEUE",
                "TAKE",
                "PUSH",
                "HEARTBEAT",
                "REAP",
                "STATUS",
                "FORGET",
                "REQUEUE",
            )
        }
        self._state_ttl = int(settings.state_ttl)

    def describe(self) -> str:
        return f"Redis at {self.settings.address} (db {self.settings.db})"

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        try:
            yield
        except (RedisError, OSError) as exc:
            raise SchedulerUnavailable(f"global scheduler: {self.describe()} is unavailable: {exc}") from exc

    async def _run(self, name: str, *args: Any) -> Any:
        async with self._guard():
            return await self._scripts[name](keys=[], args=[self.prefix, *args])

    async def ping(self) -> None:
        async with self._guard():
            await self._client.ping()

    async def close(self) -> None:
        await self._client.aclose()

    async def heartbeat(self, me: str, shard: int, info: str, active: Sequence[str]) -> int:
        """Liveness and load; renews the leases of `active` requests (running here, or streaming to here)."""
        ms = int(self.settings.lease_ttl * 1000)
        return int(await self._run("HEARTBEAT", me, shard, info, now_ms(), ms, ms, *active))

    async def leave(self, me: str) -> None:
        """Stop counting as alive now (the next reap by another instance sweeps the rest)."""
        async with self._guard():
            await self._client.delete(f"{self.prefix}alive:{me}")

    async def reap(self, me: str) -> tuple[int, int, int]:
        expired, dead, moved = await self._run("REAP", me, now_ms())
        return int(expired), int(dead), int(moved)

    async def enqueue(self, me: str, request_id: str, body: str, self_take: bool) -> tuple[str, str]:
        """-> ("leased", token) | ("queued", "") | ("full", "") | ("unregistered", "")."""
        r = await self._run(
            "ENQUEUE",
            me,
            request_id,
            body,
            self.settings.max_size,
            int(self_take),
            now_ms(),
            int(self.settings.lease_ttl * 1000),
            self._state_ttl,
        )
        return _s(r[0]), _s(r[1]) if len(r) > 1 else ""

    async def take(self, me: str, allow_steal: bool) -> Lease | None:
        s = self.settings
        r = await self._run(
            "TAKE",
            me,
            now_ms(),
            int(s.lease_ttl * 1000),
            s.min_load_score,
            s.load_shards_num,
            int(allow_steal),
        )
        if not r:
            return None
        rid, tok, body, attempt, seq, toks, src = (_s(x) for x in r)
        ids = tuple(int(t) for t in toks.split(",") if t)
        return Lease(rid, tok, body, int(attempt), int(seq), ids, src)

    async def push(
        self, me: str, lease: Lease, seq: int, kind: str, data: str, ids: Sequence[int], final: bool
    ) -> str:
        """Fenced append to the request's result stream -> "ok" | "lost" | "cancelled"."""
        csv = "".join(f"{i}," for i in ids)
        return _s(
            await self._run(
                "PUSH", me, lease.request_id, lease.token, seq, kind, data, csv, int(final), self._state_ttl
            )
        )

    async def requeue(
        self,
        me: str,
        request_id: str,
        token: str,
        sent_ids: Sequence[int] = (),
        sent_chunks: int | None = None,
    ) -> bool:
        """Give the lease back for another instance to resume; `sent_*` only for an in-process run."""
        csv = "".join(f"{i}," for i in sent_ids)
        seq = "" if sent_chunks is None else str(sent_chunks)
        return bool(await self._run("REQUEUE", me, request_id, token, csv, seq, self._state_ttl))

    async def status(self, me: str, request_id: str, expire_now: bool) -> str:
        return _s(await self._run("STATUS", me, request_id, int(expire_now)))

    async def forget(self, me: str, request_id: str) -> None:
        await self._run("FORGET", me, request_id, self._state_ttl)

    async def read(self, request_id: str, after: str, block_ms: int) -> list[Record]:
        """The request's result records after stream id `after` ("0" = all), waiting up to block_ms."""
        async with self._guard():
            key = f"{self.prefix}res:{request_id}"
            resp = await self._client.xread({key: after}, block=block_ms, count=256)
        out = []
        for _key, entries in resp or ():
            for sid, f in entries:
                out.append(Record(int(f[b"n"]), _s(f[b"k"]), _s(f[b"d"]), _s(sid)))
        return out

    async def load_table(self) -> dict[str, float]:
        """instance id -> load, across shards (for metrics and tests)."""
        async with self._guard():
            out: dict[str, float] = {}
            for s in range(self.settings.load_shards_num):
                for iid, score in await self._client.zrange(f"{self.prefix}load:{s}", 0, -1, withscores=True):
                    out[_s(iid)] = score
            return out


async def check_reachable(settings: GlobalSchedulerSettings) -> None:
    """For the launcher, before it starts anything: raises SchedulerUnavailable naming host:port."""
    store = RedisStore(settings)
    try:
        await store.ping()
    except SchedulerUnavailable as exc:
        raise SchedulerUnavailable(
            f"global scheduler: cannot reach {store.describe()}: {exc.__cause__ or exc}"
        ) from exc
    finally:
        await store.close()
