from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gs_fakes import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    try:
        server = RedisServer(tmp_path)
    except FileNotFoundError:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    server.start()
    try:
        yield server
    finally:
        server.stop()
