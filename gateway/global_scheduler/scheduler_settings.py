"""GlobalSchedulerSettings: the `--scheduler-*` flags (names and defaults as in FastDeploy) plus lease timing.

Built once by the launcher from its parsed flags (`from_namespace`); bad values fail with the flag's name.
"""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass, field, fields
from typing import Any

from paddlellm.errors import ConfigError


def _f(default: Any, help: str, flag: bool = False) -> Any:
    """`flag`: the launcher declares `--scheduler-<name>` from this field (type, default, help)."""
    return field(default=default, metadata={"help": help, "flag": flag})


@dataclass(frozen=True)
class GlobalSchedulerSettings:
    host: str = _f("127.0.0.1", "Redis host shared by all instances of the global scheduler", flag=True)
    port: int = _f(6379, "Redis port", flag=True)
    db: int = _f(0, "Redis database number", flag=True)
    password: str | None = _f(None, "Redis password (none by default)", flag=True)
    topic: str = _f("default", "only instances with the same topic share work", flag=True)
    max_size: int = _f(-1, "most requests waiting in one instance's queue; -1 = unbounded")
    ttl: float = _f(900.0, "seconds a request may wait before it starts; then it ends with an error")
    min_load_score: float = _f(
        3.0, "instances whose load (running + queued) exceeds this may be stolen from", flag=True
    )
    load_shards_num: int = _f(1, "shards of the load table", flag=True)
    # Beyond FastDeploy: liveness and leases. An instance silent for `lease_ttl` is dead; its leases expire.
    heartbeat_interval: float = _f(0.5, "seconds between heartbeats (and lease renewals)")
    lease_ttl: float = _f(3.0, "seconds a lease (and an instance's liveness) lasts without a heartbeat")
    steal_interval: float = _f(0.02, "seconds an idle instance waits between looks for work")
    connect_timeout: float = _f(1.0, "seconds to wait for a Redis connection (fail fast when it is down)")
    state_ttl: float = _f(6 * 3600.0, "seconds request state may linger in Redis after its origin died")

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"--scheduler-{name.replace('_', '-')}: {why} (got {getattr(self, name)!r})")

        if not self.host:
            raise bad("host", "must not be empty")
        if not 0 < self.port <= 65535:
            raise bad("port", "must be a port number")
        if self.db < 0:
            raise bad("db", "must be >= 0")
        if not self.topic or any(c in self.topic for c in "{}: \t\n"):
            raise bad("topic", "must be non-empty without spaces, ':' or braces")
        if self.max_size < -1 or self.max_size == 0:
            raise bad("max_size", "must be -1 (unbounded) or >= 1")
        if self.ttl <= 0:
            raise bad("ttl", "must be > 0")
        if self.min_load_score < 0:
            raise bad("min_load_score", "must be >= 0")
        if self.load_shards_num < 1:
            raise bad("load_shards_num", "must be >= 1")
        if self.heartbeat_interval <= 0 or self.lease_ttl < 2 * self.heartbeat_interval:
            raise bad("lease_ttl", "must be at least two heartbeat intervals")
        if self.steal_interval <= 0 or self.connect_timeout <= 0:
            raise bad("steal_interval", "intervals and timeouts must be > 0")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace, **overrides: Any) -> GlobalSchedulerSettings:
        """Read `scheduler_<field>` attributes of the launcher's parsed flags; missing ones keep defaults."""
        kw: dict[str, Any] = {}
        for f in fields(cls):
            value = getattr(ns, f"scheduler_{f.name}", None)
            if value is not None:
                kw[f.name] = value
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def flags(cls) -> list[tuple[str, Any, str]]:
        """(flag, default, help) of the fields the launcher exposes as `--scheduler-*` flags."""
        return [
            (f"--scheduler-{f.name.replace('_', '-')}", f.default, _with_scope(f.metadata["help"]))
            for f in fields(cls)
            if f.metadata["flag"]
        ]


def _with_scope(help: str) -> str:
    return help if "global scheduler" in help else f"{help} (global scheduler)"


def default_instance_id() -> str:
    """host-pid: unique per gateway process (each uvicorn worker is its own scheduler instance)."""
    return f"{socket.gethostname()}-{os.getpid()}"
