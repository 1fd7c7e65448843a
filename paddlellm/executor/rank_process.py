"""A rank process: the main of one tensor-parallel rank (spawned by executor/multiproc.py; it lives on the
executor's side, as vLLM keeps `WorkerProc` in its multiproc executor, so `worker/` knows no executor).

Start-up: set the rank's environment (threads = cores / N) before paddle is imported, attach the all-reduce
(shared memory on CPU, NCCL on GPU), build the model runner with this rank's shard, connect to the engine's
channel and send `Ready`. Then serve one message at a time until `Shutdown`, the engine's death (its process
sentinel), or an error: an error is reported as `Failed` and ends the process, because the other ranks are
then stuck in a collective and the executor tears the whole group down anyway.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import zmq

from paddlellm.executor.dist_env import apply_rank_env, configure_paddle, init_distributed
from paddlellm.executor.rank_messages import (
    BadSignature,
    Failed,
    Init,
    PromptLogits,
    Ready,
    Result,
    Shutdown,
    Step,
    StepDone,
    ToRank,
    Warmup,
    decode,
    encode,
)


def rank_identity(rank: int) -> bytes:
    return f"rank{rank}".encode()


def rank_main(init: Init) -> None:
    """Process entry point of a model rank; exits with 0 after Shutdown or the engine's death, 1 after an
    error."""
    serve_rank(init, _model_runner)


def _model_runner(*args: Any, **kwargs: Any) -> Any:
    from paddlellm.worker.model_runner import ModelRunner  # after the rank's environment is set

    return ModelRunner(*args, **kwargs)


def serve_rank(init: Init, make_runner: Callable[..., Any]) -> None:
    """A rank's life around `make_runner(config, info, num_blocks, rank=, world=, all_reduce=)`."""
    started = time.monotonic()
    threads = init.config.threads_per_rank
    apply_rank_env(init.rank, init.world, list(init.dist_endpoints), init.config.device)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, rank_identity(init.rank))
    sock.setsockopt(zmq.LINGER, 2000)  # let a final Failed reach the engine
    sock.connect(init.address)
    all_reduce: Any = None
    code = 1
    try:
        try:
            configure_paddle(init.config.device, threads, init.rank)
            # paddle's own SIGTERM handler prints a C++ "FatalError" report; a terminated rank is routine.
            signal.signal(signal.SIGTERM, lambda *_: os._exit(128 + signal.SIGTERM))
            all_reduce = _make_all_reduce(init)
            runner = make_runner(init.config, init.info, init.num_blocks,
                                rank=init.rank, world=init.world, all_reduce=all_reduce)
        except Exception as e:
            _report(sock, init.key, init.rank, -1, e)
            return
        load_s = time.monotonic() - started
        ready = Ready(init.rank, os.getpid(), init.world, threads, init.config.device, load_s)
        sock.send(encode(ready, init.key))
        code = _serve(sock, init.key, init.rank, runner)
    finally:
        if all_reduce is not None:
            try:
                all_reduce.close()
            except BufferError:
                pass  # a tensor view still maps the segment; the process is about to exit anyway
        sock.close()
        ctx.term()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # skip interpreter teardown: paddle's atexit hooks are slow and can hang


def _serve(sock: zmq.Socket, key: bytes, rank: int, runner: Any) -> int:
    """Message loop; returns the process exit code."""
    parent = multiprocessing.parent_process()
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    if parent is not None:
        poller.register(parent.sentinel, zmq.POLLIN)  # readable once the engine process is gone
    while True:
        events = dict(poller.poll())
        if parent is not None and parent.sentinel in events:
            return 0  # orphaned: nobody to serve
        if sock not in events:
            continue
        try:
            msg: ToRank = decode(sock.recv(), key)  # type: ignore[assignment]
        except BadSignature:
            continue  # not from our engine: never unpickled

        if isinstance(msg, Shutdown):
            return 0
        try:
            reply = _handle(runner, msg)
        except Exception as e:
            _report(sock, key, rank, getattr(msg, "seq", -1), e)
            return 1
        if rank == 0 and reply is not None:
            sock.send(encode(reply, key))


def _handle(runner: Any, msg: ToRank) -> StepDone | Result | None:
    if isinstance(msg, Step):
        return StepDone(msg.seq, runner.execute(msg.sched))
    if isinstance(msg, Warmup):
        warm = getattr(runner, "warmup", None)
        if warm is not None:
            warm()
        return Result(msg.seq, None)
    if isinstance(msg, PromptLogits):
        return Result(msg.seq, runner.prompt_logits(list(msg.token_ids)))
    raise TypeError(f"rank worker cannot handle {type(msg).__name__}")


def _report(sock: zmq.Socket, key: bytes, rank: int, seq: int, e: BaseException) -> None:
    traceback.print_exc(file=sys.stderr)  # the full story stays in this rank's log
    sock.send(encode(Failed(rank, seq, f"{type(e).__name__}: {e}"), key))


def _make_all_reduce(init: Init) -> Any:
    if init.world == 1:
        return None
    if init.config.device == "gpu":
        from paddlellm.worker.shm_allreduce import NcclAllReduce

        init_distributed()
        return NcclAllReduce(init.rank, init.world)
    from paddlellm.worker.shm_allreduce import ShmAllReduce

    if init.shm is None:
        raise ValueError("a CPU rank needs the shared-memory all-reduce group")
    return ShmAllReduce(init.shm, init.rank)

