"""The scheduler as the gateway's GenerationBackend, over a fake ensemble shaped like TritonEnsemble."""

from __future__ import annotations

import asyncio
import json

from gs_fakes import RedisServer, expected_ids, text_of

from gateway.global_scheduler import GlobalSchedulerSettings
from gateway.global_scheduler.scheduled_backend import global_backend_factory
from gateway.translate import EnsembleRequest, EnsembleResponse


class FakeStream:
    def __init__(self, responses: list[EnsembleResponse]) -> None:
        self._responses = responses
        self.done = False
        self.cancelled = False

    async def next(self) -> EnsembleResponse:
        await asyncio.sleep(0.003)
        resp = self._responses.pop(0)
        self.done = resp.final
        return resp

    def cancel(self) -> None:
        if not self.done:
            self.done = self.cancelled = True


class FakeEnsemble:
    """Like TritonEnsemble: token responses, the last with its finish reason, then an empty final one."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    def open(self, req: EnsembleRequest, request_id: str) -> FakeStream:
        self.opened.append(request_id)
        n = json.loads(req.sampling)["max_tokens"]
        ids = expected_ids(req.prompt, n)
        out = [
            EnsembleResponse(text_of([t]), (t,), "length" if i == n - 1 else "", 3, i + 1)
            for i, t in enumerate(ids)
        ]
        return FakeStream([*out, EnsembleResponse(final=True)])

    async def check_ready(self, timeout_s: float, probe: bool, cache_s: float) -> str | None:
        return None

    async def drain(self) -> None:
        return None


def test_backend_streams_like_the_local_ensemble(redis_server: RedisServer) -> None:
    s = GlobalSchedulerSettings(
        port=redis_server.port, min_load_score=0, lease_ttl=1.0, heartbeat_interval=0.2
    )

    async def main() -> None:
        local_a, local_b = FakeEnsemble(), FakeEnsemble()
        async with (
            global_backend_factory(s, capacity=2, instance_id="A")(local_a) as a,
            global_backend_factory(s, capacity=2, instance_id="B")(local_b) as _b,
        ):
            assert await a.check_ready(1.0, False, 0.0) is None

            async def one(i: int) -> list[EnsembleResponse]:
                stream = a.open(EnsembleRequest(f"p{i}", "", json.dumps({"max_tokens": 6})), f"r{i}")
                out = [await stream.next()]
                while not out[-1].final:
                    out.append(await stream.next())
                assert stream.done
                return out

            results = await asyncio.gather(*(one(i) for i in range(12)))
            for i, out in enumerate(results):
                want = expected_ids(f"p{i}", 6)
                assert [t for r in out for t in r.token_ids] == want
                assert "".join(r.text for r in out) == text_of(want)
                assert out[-2].finish_reason == "length" and out[-1] == EnsembleResponse(final=True)
            assert local_b.opened, "B took none of A's load"
            # (A may also open, then withdraw, a request it started optimistically while Redis queued it)
            assert set(local_a.opened) | set(local_b.opened) == {f"r{i}" for i in range(12)}

    asyncio.run(main())
