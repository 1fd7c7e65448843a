"""One scheduler instance with the fake engine, as a separate process (killed with SIGKILL by a test).

Usage: python instance_main.py PORT TOPIC INSTANCE_ID CAPACITY TOKEN_DELAY LEASE_TTL
"""

from __future__ import annotations

import asyncio
import sys

from gs_fakes import FakeLocalEngine

from gateway.global_scheduler import GlobalScheduler, GlobalSchedulerSettings


async def main(argv: list[str]) -> None:
    port, topic, iid, capacity, delay, lease_ttl = argv
    settings = GlobalSchedulerSettings(
        port=int(port),
        topic=topic,
        lease_ttl=float(lease_ttl),
        heartbeat_interval=float(lease_ttl) / 4,
        min_load_score=1,
    )
    sched = GlobalScheduler(settings, FakeLocalEngine(float(delay)), capacity=int(capacity), instance_id=iid)
    await sched.start()
    print("READY", flush=True)
    await asyncio.Event().wait()  # serve until killed


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
