"""Rules that request models add to their JSON schema (and so to /openapi.json).

The JSON schema must say what the validators enforce, or generated clients and schema fuzzers disagree with
the server: each validator that adds a rule adds it to the schema next to it, with these helpers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def in_branch(json_type: str, **rules: Any) -> Callable[[dict[str, Any]], None]:
    """json_schema_extra for an optional/union field: add `rules` to its `json_type` alternative."""

    def extra(schema: dict[str, Any]) -> None:
        for branch in schema.get("anyOf", [schema]):
            if branch.get("type") == json_type:
                branch.update(rules)

    return extra
