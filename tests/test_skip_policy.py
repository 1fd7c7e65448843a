"""The CI skip policy (tests/skip_policy.py), checked on small suites run by pytester: in CI a skip fails the
run unless its reason is allow-listed, a broken own module fails whether imported or import-or-skipped, a
model fixture that cannot build its model errors, and outside CI a skip is only a skip."""

from __future__ import annotations

import re

import pytest

from tests import fixtures_models
from tests.skip_policy import ALLOWED_SKIPS, CI_ENV, allowed

PLUGIN = ("-p", "tests.skip_policy")
ISA_SKIP = "the CPU lacks avx512_bf16, avx512_vnni for the avx512_bf16 kernels"


@pytest.fixture
def ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CI_ENV, "true")


@pytest.fixture
def not_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CI_ENV, raising=False)


def _suite(pytester: pytest.Pytester) -> None:
    """An own package with a module that cannot be imported, and tests that skip in the usual ways."""
    pkg = pytester.mkpydir("ownpkg")
    (pkg / "broken.py").write_text("raise ImportError('cannot import name Engine from ownpkg.core')\n")
    (pkg / "moved.py").write_text("import ownpkg.no_such_module  # a module renamed away\n")
    pytester.makepyfile(
        test_skips="""
        import pytest

        def test_passes():
            pass

        def test_needs_a_server():
            pytest.skip("redis-server is not installed")

        @pytest.mark.skipif(True, reason="qemu-x86_64 is not installed")
        def test_marked():
            pass
        """
    )


@pytest.mark.usefixtures("ci")
def test_in_ci_a_skip_fails_the_run_and_is_listed(pytester: pytest.Pytester) -> None:
    _suite(pytester)
    result = pytester.runpytest(*PLUGIN)
    result.assert_outcomes(passed=1, skipped=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*skips not allowed in CI*",
            "*2 skip(s) with a reason not on ALLOWED_SKIPS*",
            "SKIP NOT ALLOWED test_skips.py::test_needs_a_server (*test_skips.py:7): redis-server is not *",
            "SKIP NOT ALLOWED test_skips.py::test_marked (*test_skips.py:9): qemu-x86_64 is not installed",
        ]
    )


@pytest.mark.usefixtures("not_ci")
def test_outside_ci_a_skip_is_only_a_skip(pytester: pytest.Pytester) -> None:
    _suite(pytester)
    result = pytester.runpytest(*PLUGIN)
    result.assert_outcomes(passed=1, skipped=2)
    assert result.ret == pytest.ExitCode.OK
    assert "skips not allowed" not in result.stdout.str()


@pytest.mark.usefixtures("ci")
def test_an_allow_listed_skip_passes_in_ci(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.parametrize("isa", ["avx512_bf16", "avx2"])
        def test_kernels(isa):
            if isa == "avx512_bf16":
                pytest.skip({ISA_SKIP!r})
        """
    )
    result = pytester.runpytest(*PLUGIN)
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.OK


@pytest.mark.usefixtures("ci")
def test_importorskip_of_a_broken_own_module_fails_in_ci(pytester: pytest.Pytester) -> None:
    """The old pattern: importorskip turns a module renamed away (ModuleNotFoundError) into a skip of the
    whole file at collection. CI fails it."""
    _suite(pytester)
    pytester.makepyfile(
        test_engine="""
        import pytest

        pytest.importorskip("ownpkg.moved", exc_type=ModuleNotFoundError)

        def test_engine():
            pass
        """
    )
    result = pytester.runpytest(*PLUGIN, "test_engine.py")
    result.assert_outcomes(skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["SKIP NOT ALLOWED test_engine.py (*): could not import 'ownpkg.moved': *"])


@pytest.mark.usefixtures("not_ci")
def test_a_broken_own_module_imported_directly_fails_anywhere(pytester: pytest.Pytester) -> None:
    """The rule: own modules are imported directly, so a broken one is a collection error, CI or not."""
    _suite(pytester)
    pytester.makepyfile(
        test_engine="""
        from ownpkg import broken

        def test_engine():
            pass
        """
    )
    result = pytester.runpytest(*PLUGIN, "test_engine.py")
    result.assert_outcomes(errors=1)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*ImportError: cannot import name Engine from ownpkg.core*"])


@pytest.mark.usefixtures("not_ci")
def test_a_model_that_cannot_be_built_is_an_error_not_a_skip(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tests/fixtures_models.py: a failed conversion errors every test that needs the model, CI or not."""

    def broken_conversion() -> str:
        raise ValueError("GGUF tensor blk.0.attn_q.weight: unsupported type 41")

    monkeypatch.setattr(fixtures_models, "ensure_default_model", broken_conversion)
    pytester.makepyfile(
        """
        def test_one(default_model_dir):
            pass

        def test_two(default_model_dir):
            pass
        """
    )
    result = pytester.runpytest("-p", "tests.fixtures_models")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*RuntimeError: default model unavailable *: GGUF tensor blk.0.attn_q*"])


@pytest.mark.usefixtures("ci")
def test_xfail_is_not_a_skip_and_failures_keep_their_status(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.xfail(reason="known", strict=True)
        def test_known():
            assert False
        """
    )
    result = pytester.runpytest(*PLUGIN)
    result.assert_outcomes(xfailed=1)
    assert result.ret == pytest.ExitCode.OK
    pytester.makepyfile(
        test_more="""
        import pytest

        def test_fails():
            assert False

        def test_skips():
            pytest.skip("no network")
        """
    )
    result = pytester.runpytest(*PLUGIN, "test_more.py")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["SKIP NOT ALLOWED test_more.py::test_skips *: no network"])


@pytest.mark.parametrize(
    "reason",
    [
        ISA_SKIP,
        "the CPU lacks avx512f, avx512vl for the avx512 kernels",
        "the CPU runs only ('avx2',)",
        "the AVX2 kernels are this CPU's best: the 'auto' case ran them",
        "cross-ISA check needs 2 kernel ISAs, this CPU runs 1: ('avx2',)",
        "cross-ISA check needs 3 kernel ISAs, this CPU runs 2: ('avx512', 'avx2')",
        "Paddle's fused_rms_norm needs avx512f",
    ],
)
def test_allow_list_takes_the_isa_reasons(reason: str) -> None:
    assert allowed(reason) is not None


@pytest.mark.parametrize(
    "reason",
    [
        "the CPU lacks avx2, fma for the avx2 kernels",  # CI needs AVX2: nothing native would run
        "the CPU runs only ()",
        "cross-ISA check needs 2 kernel ISAs, this CPU runs 0: ()",
        "could not import 'paddle': No module named 'paddle'",
        "tritonserver not set up: no tritonserver",
        "redis-server is not installed (Debian package redis-server)",
        "default model unavailable: no network",
        "no native kernel ISA on this CPU",
        "x the CPU lacks avx512f for the avx512 kernels",  # a full match, not a search
    ],
)
def test_allow_list_refuses_everything_else(reason: str) -> None:
    assert allowed(reason) is None


def test_every_allow_list_entry_is_explained() -> None:
    for entry in ALLOWED_SKIPS:
        re.compile(entry.pattern)
        assert len(entry.why) > 40, entry
