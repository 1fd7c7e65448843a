"""The output constraint of a tool-calling request: one Lark grammar (llguidance's dialect, JSON schemas
embedded with `%json`) per parser format and tool choice, so forced calls always parse and their arguments
always validate against the tool's `parameters`, whatever the model's size.

- hermes, forced (`required` or a named function):
  `<tool_call>\\n{"name": .., "arguments": ..}\\n</tool_call>`, one or more; `auto`: free text, but each
  `<tool_call>` the model writes starts a constrained call (a lazy trigger);
- llama3_json, forced: `{"name": .., "parameters": ..}`, several separated by `; `; `auto`: not constrained;
- generic, forced: `{"tool_calls": [{"name": .., "arguments": ..}, ..]}`; `auto`: that or `{"content": ..}`.

JSON in calls is written with `, ` and `: ` separators and no other whitespace (what `json.dumps` writes and
what chat templates show the model). Several calls only with `parallel_tool_calls` (OpenAI's default true).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

_JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ", "lenient": False}
NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


def call_schema(name: str, parameters: dict[str, Any] | None, arguments_key: str) -> dict[str, Any]:
    """One call of `name`: {"name": name, <arguments_key>: an object matching `parameters`}, in that order."""
    return {
        "type": "object",
        "properties": {"name": {"const": name}, arguments_key: parameters or NO_ARGUMENTS},
        "required": ["name", arguments_key],
        "additionalProperties": False,
    }


def _json(schema: dict[str, Any]) -> str:
    """`%json {...}` for a Lark grammar. A grammar containing `::=` would be read as GBNF (StructuredSpec): in
    JSON text `::=` can only occur inside strings, where `\\u003a` spells the same `:`."""
    text = json.dumps({"x-guidance": _JSON_STYLE, **schema}, ensure_ascii=False)
    return "%json " + text.replace("::=", "\\u003a\\u003a=")


def _any_call(calls: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return calls[0] if len(calls) == 1 else {"anyOf": list(calls)}


CONTENT_ONLY = {
    "type": "object",
    "properties": {"content": {"type": "string"}},
    "required": ["content"],
    "additionalProperties": False,
}


def content_grammar() -> str:
    """generic with tool_choice "none": the answer is `{"content": ".."}` (the conversation's JSON dialect,
    which a model that has seen calls in the history keeps writing, but never a call)."""
    return f"start: {_json(CONTENT_ONLY)}\n"


def tool_grammar(
    fmt: str,
    tools: Sequence[tuple[str, dict[str, Any] | None]],
    forced: bool,
    parallel: bool,
) -> str | None:
    """The Lark grammar for `tools` ((name, parameters) pairs: all tools, or only the named one) in `fmt`;
    None when the format leaves `auto` unconstrained."""
    if fmt == "hermes":
        call = _any_call([call_schema(n, p, "arguments") for n, p in tools])
        body = '"\\n" ' + _json(call) + ' "\\n</tool_call>"'
        if forced:
            calls = 'call ("\\n" call)*' if parallel else "call"
            return f'start: {calls}\ncall: "<tool_call>" {body}\n'
        # Lazy: the text lexeme ends at the first `<tool_call>`, which the constrained call must follow.
        head = "%llguidance {}\n"
        rules = f'tag: tag_trig {body}\ntag_trig[lazy]: TEXT "<tool_call>"\nTEXT: /(.|\\n)*/\n'
        return head + ("start: tag* TEXT\n" if parallel else "start: TEXT | tag\n") + rules
    if fmt == "llama3_json":
        if not forced:
            return None
        call = _any_call([call_schema(n, p, "parameters") for n, p in tools])
        calls = 'call ("; " call)*' if parallel else "call"
        return f"start: {calls}\ncall: {_json(call)}\n"
    if fmt == "generic":
        items: dict[str, Any] = {
            "type": "array",
            "items": _any_call([call_schema(n, p, "arguments") for n, p in tools]),
        }
        items |= {"minItems": 1} if parallel else {"minItems": 1, "maxItems": 1}
        calls = {
            "type": "object",
            "properties": {"tool_calls": items},
            "required": ["tool_calls"],
            "additionalProperties": False,
        }
        if forced:
            return f"start: {_json(calls)}\n"
        return f"start: {_json({'anyOf': [calls, CONTENT_ONLY]})}\n"
    raise ValueError(f"unknown tool call format {fmt!r}")
