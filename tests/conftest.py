"""Shared pytest wiring; fixtures live in their own modules and are loaded as plugins.

tests/skip_policy.py: with CI=true a skip fails the run unless its reason is on its reviewed allow-list.
pytester: runs pytest inside a test (tests/test_skip_policy.py checks the skip policy that way).
"""

pytest_plugins = ["tests.fixtures_models", "tests.skip_policy", "pytester"]
