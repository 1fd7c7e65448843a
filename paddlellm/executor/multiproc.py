"""MultiprocExecutor: one spawned worker process per tensor-parallel rank.

The engine side of the channel is a zmq ROUTER bound to 127.0.0.1:`engine_worker_queue_port` (0 = a free
port chosen at bind time); each rank connects a DEALER named `rank<r>`. On CPU the executor also owns the
ranks' shared-memory all-reduce segment (named with the instance's IPC suffix) and unlinks it on shutdown,
also when a rank died.

Failure model: any rank that exits, reports `Failed` or stops answering makes the executor dead for good:
it aborts the all-reduce (so surviving ranks stop waiting), kills the ranks, unlinks the segment, and every
later call raises EngineDead. Waits are polls on the socket *and* every rank's process sentinel, so a
kill -9 is noticed at once and `execute()` never hangs.
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from paddlellm.config import EngineConfig
from paddlellm.errors import ConfigError, EngineDead
from paddlellm.executor.dist_env import check_tp_divisible
from paddlellm.executor.rank_messages import (
    BadSignature,
    Failed,
    FromRank,
    Init,
    PromptLogits,
    Ready,
    Result,
    Shutdown,
    Step,
    StepDone,
    Warmup,
    decode,
    encode,
)
from paddlellm.executor.rank_process import rank_identity, rank_main
from paddlellm.model_info import ModelInfo
from paddlellm.ports import free_endpoints
from paddlellm.step_types import ModelRunnerOutput, SchedulerOutput
from paddlellm.worker.shm_allreduce import ShmGroup


class MultiprocExecutor:
    def __init__(
        self,
        config: EngineConfig,
        info: ModelInfo,
        num_blocks: int,
        *,
        rank_target: Callable[[Init], None] = rank_main,
        start_timeout_s: float = 600.0,
        step_timeout_s: float = 600.0,
    ) -> None:
        """Spawn the ranks and return once every one acknowledged readiness (or raise EngineDead)."""
        self.world = config.tensor_parallel_size
        check_tp_divisible(info, self.world)
        self.config = config
        self.step_timeout_s = step_timeout_s
        self._lock = threading.Lock()
        self._dead: str | None = None
        self._closed = False
        self._seq = 0
        self._procs: list[multiprocessing.process.BaseProcess] = []
        self._group: ShmGroup | None = None
        self._key = secrets.token_bytes(32)  # signs the channel; reaches the ranks only via spawn
        self._zctx = zmq.Context()
        self._sock = self._bind(config.engine_worker_queue_port)
        try:
            self._start(info, num_blocks, rank_target, start_timeout_s)
        except BaseException:
            self.shutdown()
            raise

    # ---------------------------------------------------------------- Executor protocol
    def execute(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        """Broadcast one Step to every rank; rank 0 answers with the sampled tokens (and logprobs)."""
        reply = self._call(lambda seq: Step(seq, sched))
        assert isinstance(reply, StepDone)
        return reply.output

    def check_health(self) -> None:
        """Non-blocking: raises EngineDead if a rank exited (also one killed while idle)."""
        if self._dead is None and not self._closed:
            for rank, p in enumerate(self._procs):
                if p.exitcode is not None:
                    code = _exit_text(p.exitcode)
                    self._fail(f"tensor-parallel rank {rank} (pid {p.pid}) exited with {code}")
                    break
        if self._dead is not None:
            raise EngineDead(self._dead)
        if self._closed:
            raise EngineDead("the executor was shut down")

    def shutdown(self) -> None:
        """Ask the ranks to exit, kill stragglers, close the channel, unlink shared memory. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._dead is None and self._procs:
            for rank in range(len(self._procs)):
                self._send(rank, encode(Shutdown(), self._key))
        _stop_processes(self._procs, grace_s=5.0)
        if self._group is not None:
            self._group.unlink()
        self._sock.close(linger=0)
        self._zctx.term()

    # ---------------------------------------------------------------- extras (warmup, tests)
    def warmup(self) -> None:
        self._call(lambda seq: Warmup(seq))

    def prompt_logits(self, token_ids: list[int]) -> np.ndarray:
        reply = self._call(lambda seq: PromptLogits(seq, tuple(token_ids)))
        assert isinstance(reply, Result)
        return reply.value

    @property
    def address(self) -> str:
        return self._address

    @property
    def pids(self) -> list[int]:
        return [p.pid or -1 for p in self._procs]

    @property
    def shm_name(self) -> str | None:
        return self._group.spec.name if self._group is not None else None

    @classmethod
    def kv_memory_bytes(cls, config: EngineConfig, info: ModelInfo) -> int:
        """GPU only (untested here): free memory of device 0 minus one rank's share of the weights."""
        import paddle  # lazy: the CPU path never needs paddle in the engine process

        total = paddle.device.cuda.get_device_properties(0).total_memory
        weights = sum(os.path.getsize(os.path.join(info.path, f)) for f in os.listdir(info.path)
                      if f.endswith(".safetensors"))
        return int(total - weights / config.tensor_parallel_size * 1.2)  # 20%: activations and workspace

    # ---------------------------------------------------------------- internals
    def _bind(self, port: int) -> zmq.Socket:
        sock = self._zctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # sending to a vanished rank raises instead of dropping
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.bind(f"tcp://127.0.0.1:{port or '*'}")
        except zmq.ZMQError as e:
            sock.close(linger=0)
            self._zctx.term()
            where = f"127.0.0.1:{port}"
            raise ConfigError(f"config 'engine_worker_queue_port': cannot bind {where}: {e}") from None
        self._address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return sock

    def _start(
        self, info: ModelInfo, num_blocks: int, target: Callable[[Init], None], timeout_s: float
    ) -> None:
        """Spawn every rank, then wait for all Ready acks; a rank that fails or exits first is named."""
        gpu = self.config.device == "gpu"
        if not gpu and self.world > 1:
            self._group = ShmGroup(self.config.ipc_suffix, self.world)
        endpoints = tuple(free_endpoints(self.world)) if gpu else ()
        ctx = multiprocessing.get_context("spawn")
        exe = _python_executable()
        if exe != sys.executable:
            ctx.set_executable(exe)  # inside Triton's stub sys.executable is not a Python interpreter
        for rank in range(self.world):
            init = Init(self.config, info, num_blocks, rank, self.world, self._address,
                        self._group.spec if self._group else None, endpoints, self._key)
            p = ctx.Process(target=target, args=(init,), name=f"paddlellm-rank{rank}", daemon=True)
            p.start()
            self._procs.append(p)
        waiting = set(range(self.world))
        deadline = time.monotonic() + timeout_s
        while waiting:
            msg = self._poll(deadline, during="start-up")
            if msg is None:
                names = ", ".join(f"rank {r}" for r in sorted(waiting))
                self._fail(f"{names} did not report ready within {timeout_s:.0f} s")
                raise EngineDead(self._dead or "")
            if isinstance(msg, Ready):
                waiting.discard(msg.rank)
        if self._group is not None:
            self._group.release_name()  # every rank mapped it before Ready; nobody opens it by name again

    def _call(self, make: Any) -> FromRank:
        """Send make(seq) to every rank and wait for rank 0's answer to that seq."""
        self.check_health()
        self._seq += 1
        seq = self._seq
        payload = encode(make(seq), self._key)
        for rank in range(self.world):
            self._send(rank, payload)
        deadline = time.monotonic() + self.step_timeout_s
        while True:
            msg = self._poll(deadline, during=f"step {seq}")
            if msg is None:
                self._fail(f"rank 0 did not answer step {seq} within {self.step_timeout_s:.0f} s")
                raise EngineDead(self._dead or "")
            if isinstance(msg, StepDone | Result) and msg.seq == seq:
                return msg

    def _send(self, rank: int, payload: bytes) -> None:
        try:
            self._sock.send_multipart([rank_identity(rank), payload])
        except zmq.ZMQError as e:
            if self._closed:
                return  # best effort during shutdown
            self._fail(f"tensor-parallel rank {rank} is unreachable: {e}")
            raise EngineDead(self._dead or "") from None

    def _poll(self, deadline: float, during: str) -> FromRank | None:
        """The next message, None at the deadline; raises EngineDead if a rank exits or reports Failed."""
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        sentinels = {p.sentinel: (rank, p) for rank, p in enumerate(self._procs)}
        for fd in sentinels:
            poller.register(fd, zmq.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            events = dict(poller.poll(timeout=min(left, 1.0) * 1000))
            if self._sock in events:
                msg = self._recv()
                if msg is None:
                    continue
                if isinstance(msg, Failed):
                    self._fail(f"tensor-parallel rank {msg.rank} failed during {during}: {msg.message}")
                    raise EngineDead(self._dead or "")
                return msg  # type: ignore[return-value]
            for fd in events:
                if fd in sentinels:
                    rank, p = sentinels[fd]
                    p.join(0.5)  # reap, so the exit code is known
                    why = self._last_words(rank) or f"exited with {_exit_text(p.exitcode)}"
                    self._fail(f"tensor-parallel rank {rank} (pid {p.pid}) {why} during {during}")
                    raise EngineDead(self._dead or "")
            if self._dead is not None:  # another thread (check_health) saw a death first
                raise EngineDead(self._dead)

    def _last_words(self, rank: int) -> str | None:
        """A rank that reported Failed and exited: its report may still be in flight behind the sentinel."""
        while self._sock.poll(50):
            msg = self._recv()
            if isinstance(msg, Failed) and msg.rank == rank:
                return f"failed: {msg.message}"
        return None

    def _recv(self) -> FromRank | None:
        """One message from the socket; None (dropped unread) if it is not signed with our key."""
        frames = self._sock.recv_multipart()
        try:
            return decode(frames[-1], self._key)  # type: ignore[return-value]
        except BadSignature:
            return None

    def _fail(self, reason: str) -> None:
        """Become dead once: release waiting ranks, kill them all, unlink shared memory. Thread-safe; the
        socket is left to shutdown() (zmq sockets belong to the thread that polls them)."""
        with self._lock:
            if self._dead is not None:
                return
            self._dead = reason
        if self._group is not None:
            self._group.abort()
        _stop_processes(self._procs, grace_s=0.0)
        if self._group is not None:
            self._group.unlink()


def _stop_processes(procs: list[multiprocessing.process.BaseProcess], grace_s: float) -> None:
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.exitcode is None:
            p.terminate()
    for p in procs:
        p.join(2.0)
        if p.exitcode is None:
            p.kill()
            p.join(2.0)


def _exit_text(code: int | None) -> str:
    if code is None:
        return "no exit code"
    return f"signal {-code}" if code < 0 else f"exit code {code}"


def _python_executable() -> str:
    """The interpreter to spawn ranks with: sys.executable, unless it is an embedding binary."""
    exe = sys.executable
    if exe and os.path.basename(exe).startswith("python"):
        return exe
    for cand in (os.path.join(sys.prefix, "bin", "python3"), os.path.join(sys.base_prefix, "bin", "python3")):
        if os.access(cand, os.X_OK):
            return cand
    raise EngineDead(f"no Python interpreter to spawn tensor-parallel ranks with (sys.executable={exe!r})")
