"""schemathesis hooks for test_openapi_conformance.py (loaded through `SCHEMATHESIS_HOOKS`).

One rule of the API that no JSON schema can state, because it compares two fields: `min_tokens` (top level or
in `metadata`) may not exceed the request's `max_tokens` (a 400 otherwise). Generated bodies that break it
are brought within it; every other value stays as generated, so a body meant to be invalid stays invalid.

Against a real model (`MAX_TOKENS_CAP_ENV` set), generations are kept short: an integer max_tokens /
max_completion_tokens from 1 up to the schema's maximum (MAX_TOKENS_MAXIMUM_ENV; above it stays invalid) is
lowered to the cap, and a chat request naming neither gets the cap; a valid body stays valid and an invalid
one invalid.
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # gateway.translate.DEFAULT_MAX_TOKENS
MAX_TOKENS_CAP_ENV = "PADDLELLM_TEST_MAX_TOKENS_CAP"
MAX_TOKENS_MAXIMUM_ENV = "PADDLELLM_TEST_MAX_TOKENS_MAXIMUM"  # the schema's maximum: max_model_len - 1


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


def _capped(path: str, body: dict[str, Any], cap: int, schema_max: int | None) -> dict[str, Any]:
    names = ("max_tokens", "max_completion_tokens") if path.endswith("/chat/completions") else ("max_tokens",)
    out = dict(body)
    for name in names:
        value = _int(body.get(name))
        if value is not None and value > cap and (schema_max is None or value <= schema_max):
            out[name] = cap
    if path.endswith("/chat/completions") and all(name not in body for name in names):
        out["max_completion_tokens"] = cap
    return out


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    if not isinstance(body, dict) or context.operation is None:
        return body
    cap = os.environ.get(MAX_TOKENS_CAP_ENV)
    if cap:
        schema_max = os.environ.get(MAX_TOKENS_MAXIMUM_ENV)
        body = _capped(context.operation.path, body, int(cap), int(schema_max) if schema_max else None)
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
