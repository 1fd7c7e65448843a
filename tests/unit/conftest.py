"""Fixtures of the unit tests."""

from __future__ import annotations

import pytest

from paddlellm.cpu import KERNEL_ISAS, read_cpu
from paddlellm.native import build


@pytest.fixture(scope="module", params=KERNEL_ISAS)
def native(request: pytest.FixtureRequest) -> build.NativeLibrary:
    """The project's C kernels, once per kernel ISA; an ISA this CPU (description) lacks is skipped, and only
    that: a missing compiler fails (scripts/setup.sh installs gcc)."""
    isa, cpu = request.param, read_cpu()
    if isa not in cpu.kernel_isas:
        pytest.skip(f"the CPU lacks {', '.join(cpu.missing(isa))} for the {isa} kernels")
    return build.load(isa, cpu)
