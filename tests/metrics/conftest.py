"""Fixtures for the metrics tests."""

from __future__ import annotations

import sys
from types import ModuleType

import pytest

from tests.fakes import pb_utils as fake_pb


@pytest.fixture
def pb(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The fake triton_python_backend_utils (no MetricFamily: tests pass their own metrics backend)."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb)
    monkeypatch.setattr(fake_pb, "bls_models", {})
    return fake_pb
