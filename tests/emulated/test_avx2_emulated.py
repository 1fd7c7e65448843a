"""The engine on an AVX2-only CPU: QEMU's user-mode emulator running an AMD EPYC Milan (Zen 3: AVX2, FMA,
F16C, no AVX-512), which has no AVX-512 instruction at all, in our kernels or anywhere in Paddle.

Under it, with the Zen 3 CPU description (`PADDLELLM_CPUINFO`, since /proc/cpuinfo is still the host's), a
tiny checkpoint is loaded and generates greedy tokens on `auto` (which must pick the avx2 kernels) and on
`paddle` (Paddle's ops, which must not pick the AVX-512-only fused RMSNorm). The tokens must equal a native
run of the same choices. Without the description the engine picks AVX-512 kernels and never finishes under
the emulator (SIGILL, or a hang in Paddle's signal handler there): the timeout fails the test. Skipped only
where qemu-x86_64 is missing (scripts/setup.sh --dev installs qemu-user).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

QEMU = shutil.which("qemu-x86_64")
ROOT = Path(__file__).resolve().parents[2]
FAKE_CPUINFO = ROOT / "tests" / "fakes" / "cpuinfo_avx2_zen3"
CHILD = [sys.executable, "-m", "tests.emulated.child"]

pytestmark = pytest.mark.skipif(
    QEMU is None, reason="qemu-x86_64 is not installed (apt-get install qemu-user)"
)


def _run(prefix: list[str], path: str, choices: list[str], timeout: float) -> dict[str, dict]:
    env = {**os.environ, "PADDLELLM_CPUINFO": str(FAKE_CPUINFO), "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [*prefix, *CHILD, path, *choices], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert r.returncode == 0, f"exit {r.returncode} (-4/132: SIGILL)\n{r.stderr[-3000:]}"
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    return {row["cpu_kernels"]: row for row in rows}


@pytest.mark.timeout(1200)  # above the two runs' own timeouts (600 s emulated + 300 s native)
def test_an_avx2_only_cpu_runs_the_engine_without_avx512(tiny_checkpoint) -> None:
    path = tiny_checkpoint(arch="qwen3", tokenizer="llama2", seed=5)  # qk-norm: both norm call sites
    subprocess.run([sys.executable, "-m", "paddlellm.native.build"], check=True, capture_output=True)
    emulated = _run([str(QEMU), "-cpu", "EPYC-Milan"], path, ["auto", "paddle", "auto:wint4"], timeout=600)
    assert emulated["auto"]["isa"] == "avx2"
    assert emulated["auto:wint4"]["gemm"] == "packed-wint4-avx2"  # the integer kernels, without VNNI
    assert emulated["paddle"]["isa"] == "paddle" and emulated["paddle"]["norm"] == "PaddleRMSNorm"
    native = _run([], path, ["avx2", "paddle", "avx2:wint4"], timeout=300)
    assert emulated["auto"]["tokens"] == native["avx2"]["tokens"]
    assert emulated["paddle"]["tokens"] == native["paddle"]["tokens"]
    assert emulated["auto:wint4"]["tokens"] == native["avx2:wint4"]["tokens"]
    assert all(len(t) == 5 for t in native["avx2"]["tokens"].values())
