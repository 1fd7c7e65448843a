"""schemathesis hooks for test_openapi_conformance.py (loaded through `SCHEMATHESIS_HOOKS`).

Rules of the API that no JSON schema can state, because they compare two fields (a 400 otherwise):
`min_tokens` (top level or in `metadata`) may not exceed the request's `max_tokens`; chat's `top_logprobs`
requires `logprobs: true`; `best_of` must equal `n`; at most one structured-output constraint
(`response_format` other than text, a kind in `structured_outputs`, `guided_json/regex/choice/grammar`);
chat's `tool_choice` other than none/auto needs `tools`, a named one must be among them, tool names are
distinct, and tools that constrain the answer exclude structured-output constraints.
Generated bodies that break them are brought within them; every other value stays as generated, so a body
meant to be invalid stays invalid (structured fields are dropped only when every one given is valid on its
own, which the gateway's own field models judge).

Against a real model (`MAX_TOKENS_CAP_ENV` set), generations are kept short: an integer max_tokens /
max_completion_tokens from 1 up to the schema's maximum (MAX_TOKENS_MAXIMUM_ENV; above it stays invalid) is
lowered to the cap, and a chat request naming neither gets the cap; a valid `n` above 2 becomes 2 (n choices
are n generations); a valid body stays valid and an invalid one invalid. Both phases (map_case for the
coverage phase, map_body for the others) apply the cap. Also against a real model, valid regexes, grammars
and choices are kept to printable ASCII (`_producible`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import schemathesis
from pydantic import ValidationError

from gateway.structured_fields import StructuredFields
from gateway.tool_fields import NamedToolChoice, ToolFields

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # gateway.translate.DEFAULT_MAX_TOKENS
MAX_TOKENS_CAP_ENV = "PADDLELLM_TEST_MAX_TOKENS_CAP"
MAX_TOKENS_MAXIMUM_ENV = "PADDLELLM_TEST_MAX_TOKENS_MAXIMUM"  # the schema's maximum: max_model_len - 1
MAX_CHOICES_UNDER_CAP = 2


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
    n = _int(body.get("n"))
    if n is not None and n > MAX_CHOICES_UNDER_CAP:
        out["n"] = MAX_CHOICES_UNDER_CAP
    return out


def _cap_from_env(path: str, body: dict[str, Any]) -> dict[str, Any]:
    cap = os.environ.get(MAX_TOKENS_CAP_ENV)
    if not cap:
        return body
    schema_max = os.environ.get(MAX_TOKENS_MAXIMUM_ENV)
    return _capped(path, body, int(cap), int(schema_max) if schema_max else None)


def _pairs(path: str, body: dict[str, Any]) -> dict[str, Any]:
    """top_logprobs given -> logprobs true (chat); a valid best_of -> n's value (when n is valid)."""
    out = dict(body)
    if path.endswith("/chat/completions") and body.get("top_logprobs") is not None:
        if body.get("logprobs") in (None, False):
            out["logprobs"] = True
    best_of, n = _int(body.get("best_of")), _int(body.get("n", 1))
    if best_of is not None and best_of >= 1 and n is not None and best_of != n:
        out["best_of"] = n
    return out


_STRUCTURED_TOP = (
    "response_format",
    "structured_outputs",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
)
_STRUCTURED_KINDS = ("json", "regex", "choice", "grammar", "json_object")


def _valid_alone(name: str, value: Any) -> bool:
    try:
        StructuredFields.model_validate_json(json.dumps({name: value}))
    except (ValidationError, TypeError, ValueError):
        return False
    return True


def _one_constraint(body: dict[str, Any]) -> dict[str, Any]:
    """More than one structured-output constraint, each field valid: keep the first (the gateway's order)."""
    given = [name for name in _STRUCTURED_TOP if body.get(name) is not None]
    if not given or not all(_valid_alone(name, body[name]) for name in given):
        return body
    out = dict(body)
    kept = False
    for name in given:
        value = body[name]
        if name == "response_format":
            kept = value.get("type") != "text"
        elif name == "structured_outputs":
            inner = dict(value)
            for key in _STRUCTURED_KINDS:
                asked = (
                    inner.get(key) not in (None, False)
                    if key == "json_object"
                    else inner.get(key) is not None
                )
                if asked and kept:
                    del inner[key]
                kept = kept or asked
            out[name] = inner
        elif kept:
            del out[name]
        else:
            kept = True
    return out


def _printable(text: str) -> str:
    return "".join(c for c in text if " " <= c <= "~") or "a"


def _producible(body: dict[str, Any]) -> dict[str, Any]:
    """Real model only: the literal text of valid regexes, grammars and choices kept to printable ASCII.
    Random strings demand characters a byte-level tokenizer may lack (SmolLM2 has no token for the bytes
    0x04, 0x06, 0x13, 0x14, 0x16, 0x1d, 0xf1, 0xf2): a constraint no token can meet is the engine's to refuse
    (reported with issue #26), not this API document's to describe."""
    out = dict(body)
    for name in ("guided_regex", "guided_grammar", "guided_choice", "structured_outputs"):
        value = body.get(name)
        if value is None or not _valid_alone(name, value):
            continue
        if isinstance(value, str):
            out[name] = _printable(value)
        elif isinstance(value, list):
            out[name] = [_printable(c) for c in value]
        elif isinstance(value, dict):
            inner = dict(value)
            for key in ("regex", "grammar"):
                if isinstance(inner.get(key), str):
                    inner[key] = _printable(inner[key])
            if isinstance(inner.get("choice"), list):
                inner["choice"] = [_printable(c) for c in inner["choice"]]
            out[name] = inner
    return out


def _tools_consistent(path: str, body: dict[str, Any]) -> dict[str, Any]:
    """Chat with valid tool fields: a tool_choice other than none/auto needs tools (else dropped); a named
    choice names a tool (else the first one's); tool names are distinct (later duplicates dropped); tools
    that constrain the answer (any choice but none, with the default generic parser) take the place of
    structured-output constraints (dropped)."""
    if not path.endswith("/chat/completions"):
        return body
    try:
        fields = ToolFields.model_validate_json(
            json.dumps({k: body.get(k) for k in ("tools", "tool_choice", "parallel_tool_calls")})
        )
    except (ValidationError, TypeError, ValueError):
        return body
    out = dict(body)
    tools = list(body.get("tools") or [])
    names = [t["function"]["name"] for t in tools]
    tools = [t for i, t in enumerate(tools) if t["function"]["name"] not in names[:i]]
    if body.get("tools"):
        out["tools"] = tools
    choice = fields.tool_choice
    if not tools:
        if choice not in (None, "none", "auto"):
            out["tool_choice"] = None
        return out
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        out["tool_choice"] = {
            **body["tool_choice"],
            "function": {**body["tool_choice"]["function"], "name": names[0]},
        }
    if choice != "none":
        for name in _STRUCTURED_TOP:
            value = body.get(name)
            if value is not None and not (
                name == "response_format" and isinstance(value, dict) and value.get("type") == "text"
            ):
                out[name] = None
    return out


def _all_pairs(path: str, body: dict[str, Any]) -> dict[str, Any]:
    body = _one_constraint(_tools_consistent(path, _pairs(path, _cap_from_env(path, body))))
    return _producible(body) if os.environ.get(MAX_TOKENS_CAP_ENV) else body


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    """The coverage phase applies case hooks, not map_body: keep its two-field pairs valid too."""
    if isinstance(case.body, dict) and context.operation is not None:
        case.body = _all_pairs(context.operation.path, case.body)
    return case


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    if not isinstance(body, dict) or context.operation is None:
        return body
    body = _all_pairs(context.operation.path, body)
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
