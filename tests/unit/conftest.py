"""Fixtures of the unit tests."""

from __future__ import annotations

import pytest

from paddlellm.native import build


@pytest.fixture(scope="module")
def native() -> build.NativeLibrary:
    """The project's C kernels; skipped only on a CPU without AVX-512 (a missing compiler fails)."""
    missing = [f for f in build.REQUIRED_CPU_FLAGS if f not in build.cpu_flags()]
    if missing:
        pytest.skip(f"CPU lacks {missing}")
    return build.load()
