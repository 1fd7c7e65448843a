"""Parity-test wiring.

tests/ is on sys.path (pytest's prepend import mode, for tests/conftest.py), so the tests/triton folder
looks like an installed `triton` package to torch, which then fails importing transformers' models. Hide it
unless a real triton package is installed.
"""

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
