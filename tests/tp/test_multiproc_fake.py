"""MultiprocExecutor with fake runners: channel, readiness, rank death, cleanup, side-by-side instances.

The ranks run tests/tp/fake_runner.py (no model), but the real worker main, channel and shm all-reduce.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable

import pytest

from paddlellm.config import EngineConfig
from paddlellm.errors import ConfigError, EngineDead
from paddlellm.executor.multiproc import MultiprocExecutor
from paddlellm.executor.rank_messages import Init
from paddlellm.model_info import ModelInfo
from paddlellm.sampling import SamplingParams
from paddlellm.step_types import CachedRequestData, NewRequestData, SchedulerOutput
from tests.procs import descendants, free_port
from tests.tp.fake_runner import expected_token, failing_rank_main, fake_rank_main

FAKE = fake_rank_main


def _info(tmp_path, heads: int = 6, kv_heads: int = 6) -> ModelInfo:
    cfg = {"architectures": ["LlamaForCausalLM"], "vocab_size": 1000, "hidden_size": 64 * heads,
           "intermediate_size": 384, "num_hidden_layers": 1, "num_attention_heads": heads,
           "num_key_value_heads": kv_heads, "rms_norm_eps": 1e-5}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return ModelInfo.from_dir(str(tmp_path))


def _executor(
    tmp_path, tp: int = 2, runner: Callable[[Init], None] = FAKE, **cfg: object
) -> MultiprocExecutor:
    config = EngineConfig(model=str(tmp_path), tensor_parallel_size=tp, **cfg)  # type: ignore[arg-type]
    return MultiprocExecutor(config, _info(tmp_path), num_blocks=16, rank_target=runner)


def _new(rid: str, prompt: list[int]) -> NewRequestData:
    return NewRequestData(rid, tuple(prompt), (), SamplingParams(temperature=0.0), 0, (0,), 0)


def _shm_exists(name: str | None) -> bool:
    return name is not None and os.path.exists(f"/dev/shm/{name}")


def _decode_some(ex: MultiprocExecutor, world: int, prefix: str = "r", n_req: int = 3,
                 steps: int = 4) -> None:
    """Run prefill + decode steps and check every sampled token against the fake's formula."""
    hist = {f"{prefix}{i}": [i + 1, 2 * i + 3] for i in range(n_req)}
    out = ex.execute(SchedulerOutput(tuple(_new(r, h) for r, h in hist.items()), (),
                                     {r: len(h) for r, h in hist.items()}))
    for _ in range(steps):
        for r, tok in out.sampled_token_ids.items():
            assert tok == expected_token(hist[r], world)
            hist[r].append(tok)
        cached = tuple(CachedRequestData(r, (hist[r][-1],), (), len(hist[r]) - 1) for r in hist)
        out = ex.execute(SchedulerOutput((), cached, {r: 1 for r in hist}))
    assert set(out.sampled_token_ids) == set(hist)


def test_steps_and_clean_shutdown(tmp_path) -> None:
    ex = _executor(tmp_path, tp=2)
    shm = ex.shm_name
    try:
        # Every rank has attached, so the name is gone already; the ranks reduce through their mappings.
        assert shm and not _shm_exists(shm) and ex.address.startswith("tcp://127.0.0.1:")
        _decode_some(ex, world=2)
        assert ex.prompt_logits([1, 2, 3]).tolist() == [[3.0] * 4] * 3  # 1 + 2 from the two ranks
        ex.warmup()
        ex.check_health()
    finally:
        ex.shutdown()
    assert not _shm_exists(shm)
    assert all(not _pid_alive(p) for p in ex.pids)
    with pytest.raises(EngineDead, match="the executor was shut down"):
        ex.check_health()
    ex.shutdown()  # idempotent


def test_tp3_and_fixed_port(tmp_path) -> None:
    port = free_port()
    ex = _executor(tmp_path, tp=3, engine_worker_queue_port=port)
    try:
        assert ex.address == f"tcp://127.0.0.1:{port}"
        _decode_some(ex, world=3)
        with pytest.raises(ConfigError, match="engine_worker_queue_port"):
            _executor(tmp_path, tp=2, engine_worker_queue_port=port)
    finally:
        ex.shutdown()


def test_kill_rank_while_idle(tmp_path) -> None:
    ex = _executor(tmp_path, tp=2)
    shm = ex.shm_name
    try:
        _decode_some(ex, world=2, steps=1)
        os.kill(ex.pids[1], signal.SIGKILL)
        t0 = time.monotonic()
        while True:
            try:
                ex.check_health()
            except EngineDead as e:
                assert "rank 1" in str(e) and "signal 9" in str(e)
                break
            assert time.monotonic() - t0 < 60, "check_health did not notice the dead rank"  # a hang guard
            time.sleep(0.05)
        assert not _shm_exists(shm)  # cleaned up at once, not at shutdown
        seq = ex._seq
        # At once: the death already seen is the error, and no step is sent to wait on.
        with pytest.raises(EngineDead, match="rank 1 .*signal 9"):
            ex.execute(SchedulerOutput((_new("x", [1]),), (), {"x": 1}))
        assert ex._seq == seq, "execute() sent a step to a dead group"
        assert not _pid_alive(ex.pids[0])  # the survivor is not left behind
    finally:
        ex.shutdown()


def test_kill_rank_during_step(tmp_path) -> None:
    """Rank 0 waits in the all-reduce for rank 1, which we kill: execute() must raise, not hang."""
    ex = _executor(tmp_path, tp=2)
    shm = ex.shm_name
    try:
        import threading

        timer = threading.Timer(1.0, os.kill, args=(ex.pids[1], signal.SIGKILL))
        timer.start()
        # The rank's death is the error (not the step timeout, 600 s: pytest's timeout would end a hang).
        with pytest.raises(EngineDead, match="rank 1"):
            ex.execute(SchedulerOutput((_new("sleep:30", [1, 2]),), (), {"sleep:30": 2}))
        assert not _shm_exists(shm)
    finally:
        ex.shutdown()


def test_rank_error_in_step_is_reported(tmp_path) -> None:
    ex = _executor(tmp_path, tp=2)
    try:
        with pytest.raises(EngineDead, match="rank 1 .*injected failure"):
            ex.execute(SchedulerOutput((_new("crash", [1]),), (), {"crash": 1}))
        with pytest.raises(EngineDead, match="rank 1 .*injected failure"):
            ex.check_health()
    finally:
        ex.shutdown()


def test_start_failure_names_the_rank(tmp_path) -> None:
    with pytest.raises(EngineDead, match="rank 1 .*shard 1 is broken"):
        _executor(tmp_path, tp=2, runner=failing_rank_main)


def test_two_executors_side_by_side(tmp_path) -> None:
    """Same instance suffix on purpose: names must still not collide, and both work interleaved."""
    a = _executor(tmp_path, tp=2, instance_id="same")
    b = _executor(tmp_path, tp=2, instance_id="same")
    try:
        assert a.shm_name != b.shm_name and "same" in (a.shm_name or "")
        assert a.address != b.address
        for _ in range(2):
            _decode_some(a, world=2, prefix="a", steps=2)
            _decode_some(b, world=2, prefix="b", steps=2)
        a.shutdown()
        _decode_some(b, world=2, prefix="c", steps=1)  # b is unaffected by a's shutdown
    finally:
        a.shutdown()
        b.shutdown()


def test_foreign_messages_are_dropped(tmp_path) -> None:
    """Any local process can connect to the loopback port; what it sends must never be unpickled."""
    import pickle

    import zmq

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    ex = _executor(tmp_path, tp=2)
    ctx = zmq.Context()
    intruder = ctx.socket(zmq.DEALER)
    intruder.setsockopt(zmq.IDENTITY, b"intruder")
    intruder.connect(ex.address)
    try:
        for payload in (pickle.dumps(Evil()), b"\x00" * 40, b""):
            intruder.send(payload)
        time.sleep(0.2)
        _decode_some(ex, world=2, steps=2)
        ex.check_health()
        assert not marker.exists()
    finally:
        intruder.close(linger=0)
        ctx.term()
        ex.shutdown()


def test_heads_not_divisible(tmp_path) -> None:
    info = _info(tmp_path, heads=9, kv_heads=3)  # SmolLM2-135M's shape
    with pytest.raises(ConfigError, match=r"tensor_parallel_size': 2 .*num_attention_heads=9.*1, 3"):
        config = EngineConfig(model=str(tmp_path), tensor_parallel_size=2)
        MultiprocExecutor(config, info, 16, rank_target=FAKE)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill(0); treat it as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_engine_killed_leaves_nothing_behind(tmp_path) -> None:
    """kill -9 of the engine process (and of its resource tracker, as the launcher's restart does): its
    ranks notice (parent sentinel) and exit, and no shared-memory name is left: it was removed once the
    ranks had attached."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {os.getcwd()!r})
        from tests.tp.test_multiproc_fake import _executor
        import pathlib
        if __name__ == "__main__":
            ex = _executor(pathlib.Path({str(tmp_path)!r}), tp=2)
            print(ex.shm_name, *ex.pids, flush=True)
            time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        shm, *pids = proc.stdout.readline().split()  # type: ignore[union-attr]
        assert len(pids) == 2 and not _shm_exists(shm)
        tracker = descendants(proc.pid) - {int(p) for p in pids}
        proc.kill()
        for c in tracker:  # the launcher kills every descendant of a stub it restarts
            os.kill(c, signal.SIGKILL)
        proc.wait(10)
        t0 = time.monotonic()
        while (any(_pid_alive(int(p)) for p in pids) or _shm_exists(shm)) and time.monotonic() - t0 < 60:
            time.sleep(0.1)
        assert not any(_pid_alive(int(p)) for p in pids), "ranks outlived their engine"
        assert not _shm_exists(shm), "shared memory outlived the engine and its ranks"
    finally:
        proc.kill()
