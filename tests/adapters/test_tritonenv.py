"""launcher.tritonenv: paths and the environment that launches tritonserver (no server started)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from launcher import tritonenv
from launcher.tritonenv import BACKEND_FILES, TritonInstall, TritonNotFound


def test_launch_env_prepends_path_like_variables() -> None:
    inst = TritonInstall(Path("/bin/ts"), Path("/be"), {"PATH": "/venv/bin", "PYTHONPATH": "/repo", "X": "1"})
    env = inst.launch_env({"PATH": "/usr/bin:/venv/bin", "HOME": "/root", "X": "0"})
    assert env == {"PATH": "/venv/bin:/usr/bin", "PYTHONPATH": "/repo", "HOME": "/root", "X": "1"}
    assert inst.command(Path("/repo"), "--grpc-port=1") == [
        "/bin/ts",
        "--model-repository=/repo",
        "--backend-directory=/be",
        "--grpc-port=1",
    ]


def test_python_env_points_the_stub_at_this_interpreter(tmp_path: Path) -> None:
    env = tritonenv.python_env(tmp_path)
    bindir = Path(env["PATH"])
    assert (bindir / "python3").exists()  # the stub finds its prefix by looking python3 up on PATH
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path)
    assert Path(env["LD_LIBRARY_PATH"]).is_dir()


def test_locate_demands_the_backend_dir(tmp_path: Path) -> None:
    if tritonenv.find_pytriton_wheel() is None:
        pytest.skip("nvidia-pytriton is not installed")
    with pytest.raises(TritonNotFound, match="setup_triton.sh"):
        tritonenv.locate(backend_root=tmp_path / "nothing")


def test_install_backend_dir_is_idempotent(tmp_path: Path) -> None:
    wheel = tritonenv.find_pytriton_wheel()
    if wheel is None:
        pytest.skip("nvidia-pytriton is not installed")
    first = tritonenv.install_backend_dir(wheel, tmp_path)
    assert sorted(p.name for p in first) == sorted(BACKEND_FILES)
    assert tritonenv.install_backend_dir(wheel, tmp_path) == []
    stub = tmp_path / "python" / "triton_python_backend_stub"
    assert os.access(stub, os.X_OK)
    inst = tritonenv.locate(backend_root=tmp_path)
    assert inst.tritonserver.is_file() and str(wheel.libs) in inst.env["LD_LIBRARY_PATH"]
