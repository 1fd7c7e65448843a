"""In CI (`CI=true`) a skipped test fails the run, unless its reason is on ALLOWED_SKIPS.

A skip is silent: a broken import, a missing server or a fixture that cannot build its model would otherwise
leave CI green with the test never run. Loaded by tests/conftest.py as a pytest plugin; it records every
skip (of a test, or of a whole module at collection) and, in CI, turns a run with any skip not on the list
into a failing exit status, listing the offenders. An xfail is not a skip (the test ran and failed as
declared); the suite has none.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import pytest

CI_ENV = "CI"


@dataclass(frozen=True)
class AllowedSkip:
    pattern: str  # re.fullmatch against the skip's reason
    why: str  # what makes this skip acceptable, for the reviewer


# The reviewed allow-list: the only skips CI accepts, all about instructions this CPU lacks. Every one leaves
# the code it skips covered by a test that does run here. Anything else (a missing package, server, binary or
# data file) is a CI machine that was not set up with scripts/setup.sh --dev: that fails the run.
ALLOWED_SKIPS: tuple[AllowedSkip, ...] = (
    AllowedSkip(
        r"the CPU lacks [\w, ]+ for the avx512(_bf16)? kernels",
        "tests/unit/conftest.py `native`: an AVX-512 kernel library cannot run without those instructions; "
        "the same tests run on the lower ISAs this CPU has (AVX2 at least), and tests/emulated proves an "
        "AVX2-only CPU never executes AVX-512. No entry for avx2: CI needs it.",
    ),
    AllowedSkip(
        r"the CPU runs only \('avx2',\)",
        "tests/unit/test_packed_gemm.py: the same-bits-on-every-ISA check needs two ISAs; on an AVX2-only "
        "CPU the AVX2 results are checked against Paddle's by the other kernel tests.",
    ),
    AllowedSkip(
        r"cross-ISA check needs \d kernel ISAs, this CPU runs \d: \(('avx512', )?'avx2',?\)",
        "tests/unit/test_quant_gemm.py: as above for the quantized GEMMs; each ISA the CPU has is still "
        "checked against the reference by the per-ISA tests.",
    ),
    AllowedSkip(
        r"Paddle's fused_rms_norm needs avx512f",
        "tests/unit/test_rms_norm.py: Paddle's fused op is AVX-512 code without a runtime check (SIGILL "
        "here), and the engine never selects it on such a CPU (tests/unit/test_cpu_isa.py checks that).",
    ),
    AllowedSkip(
        r"the AVX2 kernels are this CPU's best: the 'auto' case ran them",
        "tests/engine/test_prefix_cache_real.py: forcing AVX2 repeats the 'auto' case on an AVX2-best CPU.",
    ),
)


def in_ci() -> bool:
    return os.environ.get(CI_ENV, "").strip().lower() in ("1", "true", "yes")


def allowed(reason: str) -> AllowedSkip | None:
    return next((a for a in ALLOWED_SKIPS if re.fullmatch(a.pattern, reason)), None)


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> tuple[str, str]:
    """(where the skip was raised, its reason) of a skipped report."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, lineno, "Skipped: reason")
        path, lineno, message = longrepr
        return f"{path}:{lineno}", str(message).removeprefix("Skipped: ")
    return report.nodeid, str(longrepr)


class SkipGate:
    """Records every skip; at the session's end fails the run over those not on the allow-list."""

    def __init__(self) -> None:
        self.offending: list[tuple[str, str, str]] = []  # (node id, where, reason)

    def _record(self, report: pytest.TestReport | pytest.CollectReport) -> None:
        where, reason = skip_reason(report)
        if allowed(reason) is None:
            self.offending.append((report.nodeid or "<session>", where, reason))

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):  # an xfail reports as skipped too
            self._record(report)

    @pytest.hookimpl
    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.skipped:  # a module-level skip (importorskip, pytestmark): every test in it unrun
            self._record(report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        # Only a run that would otherwise pass changes: failures and interruptions keep their own status.
        if self.offending and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.offending:
            return
        tr = terminalreporter
        tr.section("skips not allowed in CI", sep="=", red=True, bold=True)
        tr.line(
            f"{len(self.offending)} skip(s) with a reason not on ALLOWED_SKIPS (tests/skip_policy.py): "
            f"with {CI_ENV}=true a skip fails the run. Make the test run here, or add a reviewed entry.",
            red=True,
        )
        for nodeid, where, reason in self.offending:
            tr.line(f"SKIP NOT ALLOWED {nodeid} ({where}): {reason}", red=True)


def pytest_configure(config: pytest.Config) -> None:
    if in_ci():
        config.pluginmanager.register(SkipGate(), "skip_gate")
