"""Fixtures for the adapter tests: the fake triton_python_backend_utils and model.py loading."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from tests.fakes import pb_utils as fake_pb

REPO = Path(__file__).resolve().parents[2]
MODEL_REPOSITORY = REPO / "model_repository"


@pytest.fixture
def pb(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The fake installed as triton_python_backend_utils, with an empty BLS routing table."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb)
    monkeypatch.setattr(fake_pb, "bls_models", {})
    return fake_pb


@pytest.fixture
def load_model(pb: ModuleType) -> Callable[[str], ModuleType]:
    """Import model_repository/<name>/1/model.py under a unique module name (never a reload)."""
    counter = iter(range(1_000_000))

    def load(name: str) -> ModuleType:
        path = MODEL_REPOSITORY / name / "1" / "model.py"
        spec = importlib.util.spec_from_file_location(f"_triton_model_{name}_{next(counter)}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


def initialize_args(name: str, params: dict[str, str]) -> dict[str, str]:
    """The `args` Triton passes to initialize(), with parameters as in a rendered config."""
    config = {"name": name, "parameters": {k: {"string_value": v} for k, v in params.items()}}
    return {
        "model_config": json.dumps(config),
        "model_instance_kind": "CPU",
        "model_instance_name": f"{name}_0_0",
        "model_instance_device_id": "0",
        "model_repository": str(MODEL_REPOSITORY / name),
        "model_version": "1",
        "model_name": name,
    }


@pytest.fixture(autouse=True)
def no_failed_sends(caplog: pytest.LogCaptureFixture):
    """A response the adapter could not send (e.g. after FINAL: the fake raises) fails the test."""
    yield
    failed = [
        r for r in caplog.records if r.name == "paddlellm.triton.engine_model" and r.levelname == "ERROR"
    ]
    assert not failed, [r.getMessage() for r in failed]
