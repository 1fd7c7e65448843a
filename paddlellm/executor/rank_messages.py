"""Typed messages on the engine <-> rank-worker channel (one module per channel, as mini-sglang does).

Engine -> ranks: `Init` is a rank process's spawn argument; then one `Step` per engine step (it carries the
SchedulerOutput, i.e. new requests once and only the changes afterwards), and the control messages `Warmup`,
`PromptLogits` (tests) and `Shutdown`. Ranks -> engine: `Ready` once loaded, then `StepDone` / `Result` from
rank 0 only (every rank computes the same sampled tokens; only rank 0 turns logits into the logprobs a
`ModelRunnerOutput` carries), and `Failed` from any rank.

A step's grammar masks (structured output, 6 KiB per row for a 49k vocabulary) travel inside its
SchedulerOutput, so every rank applies the scheduler's masks and none recomputes them.

Encoding is pickle (highest protocol) of these frozen dataclasses: a 32-request decode step encodes in ~25 us
and decodes in ~20 us here (see tests/tp/test_messages.py), small beside a step and without a schema to keep
in sync with outputs.py. Unpickling runs code, and any local process can connect to a loopback port, so
every message carries an HMAC-SHA256 under a per-executor random key (handed to the ranks in their spawn
argument, never sent over the socket); a message with a bad signature is dropped before unpickling.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
from dataclasses import dataclass
from typing import Any

from paddlellm.config import EngineConfig
from paddlellm.model_info import ModelInfo
from paddlellm.step_types import ModelRunnerOutput, SchedulerOutput
from paddlellm.worker.shm_allreduce import ShmSpec


# ---------------------------------------------------------------- engine -> ranks
@dataclass(frozen=True)
class Init:
    """Everything a rank needs to start; the spawn argument of its process (pickled once)."""

    config: EngineConfig
    info: ModelInfo
    num_blocks: int
    rank: int
    world: int
    address: str  # the engine's channel, tcp://127.0.0.1:<port>
    shm: ShmSpec | None  # CPU all-reduce group; None on GPU
    dist_endpoints: tuple[str, ...]  # paddle.distributed rendezvous (GPU only)
    key: bytes = b""  # the channel's signing key


@dataclass(frozen=True)
class Step:
    seq: int
    sched: SchedulerOutput


@dataclass(frozen=True)
class Warmup:
    seq: int


@dataclass(frozen=True)
class PromptLogits:
    """Tests: the full-vocab logits of every prompt position (no KV cache is kept)."""

    seq: int
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class Shutdown:
    pass


# ---------------------------------------------------------------- ranks -> engine
@dataclass(frozen=True)
class Ready:
    rank: int
    pid: int
    world: int
    threads: int
    device: str
    load_seconds: float


@dataclass(frozen=True)
class StepDone:
    seq: int
    output: ModelRunnerOutput


@dataclass(frozen=True)
class Result:
    """The answer to a control message (Warmup: None; PromptLogits: a float32 ndarray)."""

    seq: int
    value: Any


@dataclass(frozen=True)
class Failed:
    rank: int
    seq: int  # -1: during start-up
    message: str  # one line for operators and logs; the traceback stays in the rank's stderr


ToRank = Step | Warmup | PromptLogits | Shutdown
FromRank = Ready | StepDone | Result | Failed


_MAC = hashlib.sha256().digest_size


class BadSignature(ValueError):
    """A message on the worker channel that was not signed with this executor's key."""


def encode(msg: ToRank | FromRank, key: bytes) -> bytes:
    body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return hmac.digest(key, body, "sha256") + body


def decode(data: bytes, key: bytes) -> ToRank | FromRank:
    mac, body = data[:_MAC], data[_MAC:]
    if not hmac.compare_digest(mac, hmac.digest(key, body, "sha256")):
        raise BadSignature("unsigned or forged message on the worker channel")
    msg = pickle.loads(body)
    if not isinstance(msg, ToRank | FromRank):
        raise TypeError(f"unexpected message type on the worker channel: {type(msg).__name__}")
    return msg
