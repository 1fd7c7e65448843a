"""schemathesis hooks for test_openapi_conformance.py (loaded through `SCHEMATHESIS_HOOKS`).

One rule of the API that no JSON schema can state, because it compares two fields: `min_tokens` (top level or
in `metadata`) may not exceed the request's `max_tokens` (a 400 otherwise). Generated bodies that break it
are brought within it; every other value stays as generated, so a body meant to be invalid stays invalid.
"""

from __future__ import annotations

from typing import Any

import schemathesis

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # gateway.translate.DEFAULT_MAX_TOKENS


def _int(value: Any) -> int | None:
    """The integer JSON `value` stands for (3 and 3.0 alike), None for anything else."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _max_tokens(path: str, body: dict[str, Any]) -> int | None:
    """The effective max_tokens (None: unbounded), when the body's own values are valid integers."""
    if path.endswith("/chat/completions"):
        chosen = body.get("max_completion_tokens")
        if chosen is None:
            chosen = body.get("max_tokens")
        return _int(chosen)
    chosen = body.get("max_tokens")
    return COMPLETIONS_DEFAULT_MAX_TOKENS if chosen is None else _int(chosen)


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    if not isinstance(body, dict) or context.operation is None:
        return body
    limit = _max_tokens(context.operation.path, body)
    if limit is None or limit < 1:
        return body
    top = _int(body.get("min_tokens"))
    if top is not None and top > limit:
        body = {**body, "min_tokens": limit}
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        raw = metadata.get("min_tokens")
        value = (
            _int(raw) if not isinstance(raw, str) else (int(raw) if raw.isascii() and raw.isdigit() else None)
        )
        if value is not None and value > limit:
            body = {
                **body,
                "metadata": {**metadata, "min_tokens": limit if _int(raw) is not None else str(limit)},
            }
    return body
