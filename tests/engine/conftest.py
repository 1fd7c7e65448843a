"""Engine-test wiring: the tiny checkpoints are built with transformers, and torch probes for a `triton`
package; tests/triton (tests/ is on sys.path) must not look like one. Same fix as tests/parity/conftest.py;
it belongs in tests/conftest.py once for all folders."""

from __future__ import annotations

import importlib.util
import os
import sys


def _hide_tests_triton() -> None:
    spec = importlib.util.find_spec("triton")
    if spec is None or spec.origin not in (None, "namespace"):
        return
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if all(os.path.abspath(p).startswith(here) for p in (spec.submodule_search_locations or [])):
        sys.modules["triton"] = None  # type: ignore[assignment]  # "not installed" for torch's probe


_hide_tests_triton()
