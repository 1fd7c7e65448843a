"""The rank channel's messages survive encoding; decoding refuses unsigned, forged and foreign messages."""

from __future__ import annotations

import pickle

import pytest

from paddlellm.executor.rank_messages import (
    BadSignature,
    Failed,
    Ready,
    Result,
    Shutdown,
    Step,
    StepDone,
    Warmup,
    decode,
    encode,
)
from paddlellm.sampling import SamplingParams
from paddlellm.step_types import (
    CachedRequestData,
    ModelRunnerOutput,
    NewRequestData,
    SchedulerOutput,
    TokenLogprobs,
)

KEY = b"k" * 32


def _step(n: int) -> Step:
    new = (NewRequestData("new", (1, 2, 3), (), SamplingParams(temperature=0.5, seed=3), 3, (0, 1), 0),)
    cached = tuple(CachedRequestData(f"req-{i}", (5,), (9,) if i % 7 == 0 else (), 100 + i) for i in range(n))
    counts = {"new": 3} | {c.request_id: 1 for c in cached}
    return Step(4, SchedulerOutput(new, cached, counts, frozenset({"gone"})))


@pytest.mark.parametrize("msg", [
    _step(3), Warmup(1), Shutdown(), Ready(1, 123, 2, 1, "cpu", 1.5),
    StepDone(4, ModelRunnerOutput({"a": 1})), Result(5, None), Failed(1, -1, "ValueError: x"),
    StepDone(6, ModelRunnerOutput(  # the logprobs ride along
        {"a": 1, "b": 2},
        {"a": TokenLogprobs(1, -0.5, 1, ((1, -0.5), (7, -1.25)))},
        {"b": (3, (TokenLogprobs(9, -3.0, 4), TokenLogprobs(8, -0.1, 1, ((8, -0.1),))))},
    )),
])
def test_round_trip(msg: object) -> None:
    assert decode(encode(msg, KEY), KEY) == msg  # type: ignore[arg-type]


class _Boom:
    def __reduce__(self):  # unpickling this would run code
        return (exec, ("raise SystemExit('unpickled a forged message')",))


def test_unsigned_and_forged_messages_are_never_unpickled() -> None:
    with pytest.raises(BadSignature, match="unsigned or forged"):
        decode(pickle.dumps(_Boom()), KEY)
    with pytest.raises(BadSignature, match="unsigned or forged"):
        decode(encode(Shutdown(), b"other key"), KEY)
    good = encode(Warmup(1), KEY)
    with pytest.raises(BadSignature, match="unsigned or forged"):
        decode(good[:-1] + bytes([good[-1] ^ 1]), KEY)


def test_decode_rejects_foreign_objects() -> None:
    with pytest.raises(TypeError, match="unexpected message type"):
        decode(encode({"not": "a message"}, KEY), KEY)  # type: ignore[arg-type]


def test_a_decode_step_is_small() -> None:
    """The per-step cost the channel adds must stay far below a decode step (tens of ms). That cost is a
    pickle and an HMAC of the message, so bound its size, which no machine load changes: a few tens of
    bytes per request, no token history. (The time itself: python benchmarks/bench_tp.py channel.)"""
    sizes = {n: len(encode(_step(n), KEY)) for n in (1, 32, 256)}
    assert sizes[32] < 4096, sizes
    assert (sizes[256] - sizes[32]) / (256 - 32) < 64, sizes  # bytes per further request
