"""Shared pytest wiring; fixtures live in their own modules and are loaded as plugins."""

pytest_plugins = ["tests.fixtures_models"]
