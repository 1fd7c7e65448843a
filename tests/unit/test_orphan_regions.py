"""The launcher's cleanup of python-backend regions nobody maps any more (a stub that died unseen)."""

from __future__ import annotations

import mmap
import time
import uuid
from pathlib import Path

from launcher.supervisor import _orphan_regions, _settle_wait


def test_only_regions_made_since_the_start_and_mapped_by_no_process_are_orphans() -> None:
    path = Path("/dev/shm", f"triton_python_backend_shm_region_test-{uuid.uuid4()}")
    path.write_bytes(b"\0" * 4096)
    try:
        made = path.stat().st_ctime
        assert path in _orphan_regions(made - 1.0, settle_s=0.0)
        assert path not in _orphan_regions(made + 1.0, settle_s=0.0)  # older than this tritonserver
        assert path not in _orphan_regions(made - 1.0, settle_s=60.0)  # too fresh: maybe still being set up
        with path.open("r+b") as f, mmap.mmap(f.fileno(), 4096):
            assert path not in _orphan_regions(made - 1.0, settle_s=0.0)  # a live process maps it
        time.sleep(0.01)
        assert path in _orphan_regions(made - 1.0, settle_s=0.0)
    finally:
        path.unlink(missing_ok=True)


def test_the_last_cleanup_waits_until_the_freshest_region_can_be_judged() -> None:
    path = Path("/dev/shm", f"triton_python_backend_shm_region_test-{uuid.uuid4()}")
    path.write_bytes(b"\0" * 4096)
    try:
        made = path.stat().st_ctime
        wait = _settle_wait(made - 1.0, settle_s=5.0)
        assert 3.0 < wait <= 5.0  # made just now: judged once it is 5 s old
        far_future = time.time() + 3600
        assert _settle_wait(far_future, settle_s=5.0) == 0.0  # nothing made in the window: no wait
    finally:
        path.unlink(missing_ok=True)
