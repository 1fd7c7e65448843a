"""benchmarks/stack_profile.py (bench_stack --profile): process roles, CPU deltas per step, Triton's model
statistics per inference. No server: a real child process stands in for a stub, the stats are fed in."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sp():  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("stack_profile", REPO / "benchmarks" / "stack_profile.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["stack_profile"] = mod  # dataclasses resolve their module by name
    spec.loader.exec_module(mod)
    return mod


def test_descendants_and_cpu_by_role(sp, tmp_path: Path) -> None:  # noqa: ANN001
    # A child whose argv looks like a python-backend stub of model `detokenizer`, burning some CPU.
    model_py = tmp_path / "model_repository" / "detokenizer" / "1" / "model.py"
    model_py.parent.mkdir(parents=True)
    stub = tmp_path / "triton_python_backend_stub"
    stub.symlink_to(sys.executable)
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ntime.sleep(30)"
    model_py.write_text(busy)
    child = subprocess.Popen([str(stub), str(model_py)])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            cpu = sp.cpu_by_role(os.getpid())
            if cpu.get("stub:detokenizer", 0.0) >= 0.25:
                break
            time.sleep(0.1)
        assert child.pid in sp.descendants(os.getpid())
        assert cpu.get("stub:detokenizer", 0.0) >= 0.25, cpu
    finally:
        child.kill()
        child.wait()


def test_report_per_step_and_per_inference(sp) -> None:  # noqa: ANN001
    stats = sp.ModelStats
    before = sp.Snapshot(
        cpu={"stub:detokenizer": 1.0, "tritonserver": 2.0},
        models={"detokenizer": stats(100, 100, 10**9, 0, 2 * 10**8, 0)},
    )
    after = sp.Snapshot(
        cpu={"stub:detokenizer": 1.64, "tritonserver": 3.0, "gateway": 0.32},
        models={"detokenizer": stats(100 + 64 * 32, 100 + 64 * 32, 10**9 + 64 * 32 * 10**7, 64 * 32 * 10**5,
                                     2 * 10**8 + 64 * 32 * 4 * 10**5, 0)},
    )
    rep = sp.report(before, after, tokens=64 * 32, steps=64)
    assert rep["cpu_ms_per_step"]["stub:detokenizer"] == pytest.approx(10.0)
    assert rep["cpu_ms_per_step"]["tritonserver"] == pytest.approx(1000 / 64)
    assert rep["cpu_ms_per_step"]["gateway"] == pytest.approx(5.0)  # new process: counted from 0
    det = rep["models"]["detokenizer"]
    assert det["inferences"] == det["executions"] == 2048
    assert det["queue_ms_per_inference"] == pytest.approx(10.0)
    assert det["compute_ms_per_inference"] == pytest.approx(0.5)
    assert det["compute_ms_per_step"] == pytest.approx(16.0)
    text = sp.format_report(rep)
    assert "stub:detokenizer 10.0" in text and "2048 inferences in 2048 executions" in text
