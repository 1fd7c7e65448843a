"""Free loopback ports, picked by the OS: the one helper for every process that needs a port it did not get
from a flag (tritonserver's three ports, paddle.distributed rendezvous endpoints, tests and benchmarks)."""

from __future__ import annotations

import socket


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct ports that are free now. All n sockets are held open until every one is bound, so the OS
    cannot hand the same port out twice; the caller binds them soon after (a small race remains)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def free_endpoints(n: int, host: str = "127.0.0.1") -> list[str]:
    """n `host:port` endpoints (paddle.distributed's rendezvous: GPU ranks and the gloo benchmark)."""
    return [f"{host}:{p}" for p in free_ports(n, host)]
