"""ShmAllReduce between real processes: sums, bit-identical results, chunking, abort, cleanup."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from typing import Any

import numpy as np
import pytest

from paddlellm.worker.shm_allreduce import AllReduceAborted, ShmAllReduce, ShmGroup


def _inputs(world: int, shape: tuple[int, ...], calls: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(7)
    return [[rng.standard_normal(shape).astype(np.float32) * 100 for _ in range(calls)] for _ in range(world)]


def _rank(spec: Any, rank: int, shape: tuple[int, ...], calls: int, use_paddle: bool, q: Any) -> None:
    ar = ShmAllReduce(spec, rank)
    outs = []
    for x in _inputs(spec.world, shape, calls)[rank]:
        if use_paddle:
            import paddle

            t = paddle.to_tensor(x)
            assert ar(t) is t  # in place
            outs.append(t.numpy())
        else:
            y = x.copy()
            ar(y)
            outs.append(y)
    q.put((rank, outs, ar.stats.calls))
    ar.close()


def _run(world: int, shape: tuple[int, ...], calls: int = 5, slot_bytes: int = 1 << 16,
         use_paddle: bool = False) -> dict[int, list[np.ndarray]]:
    group = ShmGroup(f"test{os.getpid()}", world, slot_bytes=slot_bytes)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(group.spec, r, shape, calls, use_paddle, q))
             for r in range(world)]
    for p in procs:
        p.start()
    try:
        got = {}
        for _ in range(world):
            rank, outs, _calls = q.get(timeout=120)
            got[rank] = outs
    finally:
        for p in procs:
            p.join(30)
        group.unlink()
    assert not os.path.exists(f"/dev/shm/{group.spec.name}")
    return got


@pytest.mark.parametrize("world,shape", [(2, (8, 576)), (3, (5, 33)), (2, (40000,))])
def test_sum_is_exact_and_identical_on_every_rank(world: int, shape: tuple[int, ...]) -> None:
    """(40000,) floats exceed the 64 KiB slot: the call is chunked."""
    got = _run(world, shape)
    ins = _inputs(world, shape, 5)
    for call in range(5):
        want = ins[0][call] + ins[1][call]  # fixed rank order, float32
        for r in range(2, world):
            want = want + ins[r][call]
        for r in range(world):
            assert got[r][call].dtype == np.float32
            assert np.array_equal(got[r][call], want), f"rank {r} call {call}"


def test_paddle_tensors_in_place() -> None:
    pytest.importorskip("paddle", exc_type=ModuleNotFoundError)
    got = _run(2, (4, 576), calls=3, use_paddle=True)
    ins = _inputs(2, (4, 576), 3)
    for call in range(3):
        assert np.array_equal(got[0][call], ins[0][call] + ins[1][call])
        assert np.array_equal(got[0][call], got[1][call])


def test_world_of_one_is_identity() -> None:
    group = ShmGroup("solo", 1)
    try:
        ar = ShmAllReduce(group.spec, 0)
        x = np.arange(10, dtype=np.float32)
        assert np.array_equal(ar(x.copy()), x)
        ar.close()
    finally:
        group.unlink()


def test_abort_releases_a_waiting_rank() -> None:
    """Rank 0 waits for a rank 1 that never comes; the owner's abort makes it raise promptly."""
    group = ShmGroup("abort", 2)
    ar = ShmAllReduce(group.spec, 0, timeout_s=30)
    try:
        import threading

        threading.Timer(0.3, group.abort).start()
        t0 = time.monotonic()
        with pytest.raises(AllReduceAborted, match="rank died"):
            ar(np.ones(4, np.float32))
        assert time.monotonic() - t0 < 2.0
    finally:
        ar.close()
        group.unlink()


def test_missing_peer_times_out() -> None:
    group = ShmGroup("timeout", 2)
    ar = ShmAllReduce(group.spec, 1, timeout_s=0.2)
    try:
        with pytest.raises(AllReduceAborted, match=r"ranks \[0\] did not arrive"):
            ar(np.ones(4, np.float32))
    finally:
        ar.close()
        group.unlink()


def test_attach_checks_the_segment_and_names_differ() -> None:
    a, b = ShmGroup("same", 2), ShmGroup("same", 3)
    try:
        assert a.spec.name != b.spec.name and "same" in a.spec.name
        with pytest.raises(ValueError, match="does not match"):
            ShmAllReduce(type(a.spec)(a.spec.name, 3, a.spec.slot_bytes), 0)
    finally:
        a.unlink()
        b.unlink()
        a.unlink()  # idempotent
    assert a.unlinked and not os.path.exists(f"/dev/shm/{a.spec.name}")
