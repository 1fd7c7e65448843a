"""Tools and tool-call histories -> the messages and variables a chat template renders.

Which of two paths a request takes depends on the chat template's source:
- The template reads `tools` (Qwen2.5/3, Llama 3.1, Mistral, ...): it gets the OpenAI tool objects as the
  variable `tools` (None when the request has none, as transformers passes), and the history's tool calls
  with `function.arguments` parsed into objects, which such templates `tojson` (as vLLM does).
- It does not (the default model's ChatML): the tools are described in a system message, merged into the
  conversation's own system message if it starts with one, together with the answer format of the
  server's tool format; the history is rewritten as plain text such a template renders: an assistant's
  calls become its content, written as that format says, and `tool` results become `user` messages (one
  per run of consecutive results, so templates that enforce user/assistant alternation still render).

Everything here is a pure function of the request, and each message is rewritten on its own (the tools
only touch the first one), so the prompt of an agent loop's turn k is a prefix of turn k+1's: the prefix
cache hits across turns.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from paddlellm.errors import InvalidRequest

ToolFormat = Literal["hermes", "llama3_json", "generic"]
TOOL_FORMATS: tuple[ToolFormat, ...] = get_args(ToolFormat)

# template_supports_tools: a `{{ }}` or `{% %}` block names the variable `tools` (outside string literals,
# not as an attribute like `message.tools`, not as part of a longer name like `custom_tools`).
_JINJA_CODE = re.compile(r"\{\{(.*?)\}\}|\{%(.*?)%\}", re.S)
_STRING_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", re.S)
_TOOLS_VARIABLE = re.compile(r"(?<![\w.])tools\b")


def detect_tool_format(template_source: str | None) -> ToolFormat:
    """The tool-call format a chat template teaches its model: "hermes" if it writes `<tool_call>` (Qwen2.5,
    Qwen3, Hermes), "llama3_json" if it has Llama 3.1's JSON calls (`<|python_tag|>`, or the `ipython` role
    with `"parameters"`), else "generic" (tools described in a system message, calls as JSON)."""
    src = template_source or ""
    if "<tool_call>" in src:
        return "hermes"
    if "<|python_tag|>" in src or ("ipython" in src and '"parameters"' in src):
        return "llama3_json"
    return "generic"


def template_supports_tools(template_source: str | None) -> bool:
    """Whether the template reads the `tools` variable (in a `{{ }}` or `{% %}` block, outside string
    literals): if so it renders tools and tool histories itself, else prepare_chat writes them as text."""
    for m in _JINJA_CODE.finditer(template_source or ""):
        code = _STRING_LITERAL.sub("''", m.group(1) if m.group(1) is not None else m.group(2))
        if _TOOLS_VARIABLE.search(code):
            return True
    return False


@dataclass(frozen=True)
class ToolCall:
    """One call of an assistant history message, its arguments parsed."""

    id: str | None
    name: str
    arguments: dict[str, Any]


def check_tools(tools: Any) -> list[dict[str, Any]]:
    """OpenAI `tools` -> copies without null fields ([] for None or []). Each is
    {"type": "function", "function": {"name": non-empty str, "description"?: str, "parameters"?: object}};
    other keys (e.g. `strict`) pass through. Raises InvalidRequest naming the field."""
    if tools is None:
        return []
    if not isinstance(tools, Sequence) or isinstance(tools, str | bytes):
        raise InvalidRequest("'tools' must be a list of tool objects", param="tools")
    out, seen = [], set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping):
            raise _invalid(where, "must be an object")
        if tool.get("type") != "function":
            raise _invalid(f"{where}.type", "must be 'function'")
        fn = tool.get("function")
        if not isinstance(fn, Mapping):
            raise _invalid(f"{where}.function", "must be an object")
        fn = {k: v for k, v in fn.items() if v is not None}
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise _invalid(f"{where}.function.name", "must be a non-empty string")
        if name in seen:
            raise _invalid(f"{where}.function.name", f"{name!r} is given twice")
        seen.add(name)
        if not isinstance(fn.get("description", ""), str):
            raise _invalid(f"{where}.function.description", "must be a string")
        if not isinstance(fn.get("parameters", {}), Mapping):
            raise _invalid(f"{where}.function.parameters", "must be a JSON schema object")
        out.append({**{k: v for k, v in tool.items() if v is not None}, "function": fn})
    return out


def prepare_chat(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, fmt: ToolFormat, supports_tools: bool
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(messages for the template, extra template variables) for validated OpenAI chat messages (see
    chat_template.validate_messages) and the request's `tools`. `fmt` matters only when the template lacks
    tool support (`supports_tools` False). Malformed tools or tool messages raise InvalidRequest naming the
    field, e.g. `messages[3].tool_call_id`."""
    tool_list = check_tools(tools)
    if supports_tools:
        return _walk(messages, None), {"tools": tool_list or None}
    converted = _walk(messages, fmt)
    if tool_list:
        converted = _with_system_text(converted, tools_system_text(tool_list, fmt))
    return converted, {}


def _walk(messages: list[dict[str, Any]], fmt: ToolFormat | None) -> list[dict[str, Any]]:
    """Check the tool messages; rewrite them as text in `fmt`, or (None) only parse call arguments."""
    names: dict[str, str] = {}  # call id -> function name, of the calls so far
    out: list[dict[str, Any]] = []
    after_tool = False  # the last message written is a tool result (as text): merge the next result into it
    for i, msg in enumerate(messages):
        role = msg.get("role")
        if msg.get("tool_calls") and role != "assistant":
            raise _invalid(f"messages[{i}].tool_calls", "are only for assistant messages")
        if role == "assistant" and msg.get("tool_calls"):
            calls = _read_calls(msg["tool_calls"], i)
            names.update((c.id, c.name) for c in calls if c.id is not None)
            out.append(_calls_message(msg, calls, fmt))
            after_tool = False
        elif role == "tool":
            result = _tool_result(msg, i, names)
            if fmt is None:
                out.append(msg)
            elif after_tool:
                out[-1] = {**out[-1], "content": out[-1]["content"] + "\n" + result}
            else:
                out.append({"role": "user", "content": result})
            after_tool = True
        else:
            out.append(msg)
            after_tool = False
    return out


def _read_calls(raw: Any, i: int) -> list[ToolCall]:
    where = f"messages[{i}].tool_calls"
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
        raise _invalid(where, "must be a list of tool calls")
    calls = []
    for j, call in enumerate(raw):
        at = f"{where}[{j}]"
        if not isinstance(call, Mapping):
            raise _invalid(at, "must be an object")
        if call.get("type") != "function":
            raise _invalid(f"{at}.type", "must be 'function'")
        call_id = call.get("id")
        if call_id is not None and not isinstance(call_id, str):
            raise _invalid(f"{at}.id", "must be a string")
        fn = call.get("function")
        if not isinstance(fn, Mapping):
            raise _invalid(f"{at}.function", "must be an object")
        name, arguments = fn.get("name"), fn.get("arguments")
        if not isinstance(name, str) or not name:
            raise _invalid(f"{at}.function.name", "must be a non-empty string")
        if not isinstance(arguments, str):
            raise _invalid(f"{at}.function.arguments", "must be a string of JSON")
        try:
            parsed = json.loads(arguments)
        except ValueError as e:
            raise _invalid(f"{at}.function.arguments", f"is not valid JSON: {e}") from None
        if not isinstance(parsed, dict):
            raise _invalid(f"{at}.function.arguments", "must be a JSON object")
        calls.append(ToolCall(call_id, name, parsed))
    return calls


def _tool_result(msg: Mapping[str, Any], i: int, names: Mapping[str, str]) -> str:
    """The result as text (`{"tool_response": {"name", "content"}}`); checks the call it answers."""
    call_id = msg.get("tool_call_id")
    where = f"messages[{i}].tool_call_id"
    if not isinstance(call_id, str) or not call_id:
        raise _invalid(where, "is required: the id of the call this tool message answers")
    if call_id not in names:
        raise _invalid(where, f"{call_id!r}: no earlier assistant tool call has this id")
    return _json({"tool_response": {"name": names[call_id], "content": msg.get("content")}})


def _calls_message(msg: Mapping[str, Any], calls: list[ToolCall], fmt: ToolFormat | None) -> dict[str, Any]:
    if fmt is None:  # the template writes the calls: give it objects to tojson, the rest as sent
        parsed = [
            {**raw, "function": {**raw["function"], "arguments": c.arguments}}
            for raw, c in zip(msg["tool_calls"], calls, strict=True)
        ]
        return {**msg, "tool_calls": parsed}
    text = {k: v for k, v in msg.items() if k != "tool_calls"}
    text["content"] = calls_text(calls, fmt, msg.get("content") or "")
    return text


def calls_text(calls: Sequence[ToolCall], fmt: ToolFormat, content: str = "") -> str:
    """Calls written as a model answering in `fmt` writes them (text `content` kept: before the calls, or,
    in the generic format, as the object's `content`)."""
    if fmt == "generic":
        obj: dict[str, Any] = {"tool_calls": [{"name": c.name, "arguments": c.arguments} for c in calls]}
        if content:
            obj["content"] = content
        return _json(obj)
    if fmt == "hermes":
        body = "\n".join(
            f"<tool_call>\n{_json({'name': c.name, 'arguments': c.arguments})}\n</tool_call>" for c in calls
        )
    else:  # llama3_json: one object per call, `; `-separated (Llama 3.1 itself writes one)
        body = "; ".join(_json({"name": c.name, "parameters": c.arguments}) for c in calls)
    return f"{content}\n{body}" if content else body


_ANSWER_FORMAT: dict[ToolFormat, str] = {
    "generic": (
        "Answer with exactly one JSON object and nothing else. To call tools:\n"
        '{"tool_calls": [{"name": "<tool name>", "arguments": {<the arguments>}}]}\n'
        "To answer the user directly, or with the results of your tool calls once they are given:\n"
        '{"content": "<your answer>"}'
    ),
    "hermes": (
        "To call a tool, write its name and arguments as a JSON object between <tool_call> and </tool_call>, "
        "one block per call:\n"
        '<tool_call>\n{"name": "<tool name>", "arguments": {<the arguments>}}\n</tool_call>\n'
        "Otherwise answer the user directly."
    ),
    "llama3_json": (
        "To call a tool, answer with only a JSON object:\n"
        '{"name": "<tool name>", "parameters": {<the arguments>}}\n'
        "Otherwise answer the user directly."
    ),
}


def tools_system_text(tools: Sequence[Mapping[str, Any]], fmt: ToolFormat) -> str:
    """The system text that describes checked `tools` and the answer format of `fmt`."""
    lines = []
    for tool in tools:
        fn = tool["function"]
        lines.append(_json({k: fn[k] for k in ("name", "description", "parameters") if k in fn}))
    listing = "\n".join(lines)
    if fmt == "hermes":
        listing = f"<tools>\n{listing}\n</tools>"
    return (
        "You can call these tools (each with its name, what it does and the JSON schema of its arguments):\n"
        f"{listing}\n\n{_ANSWER_FORMAT[fmt]}"
    )


def _with_system_text(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    if messages and messages[0].get("role") == "system":
        first = messages[0]
        own = first.get("content") or ""
        return [{**first, "content": f"{own}\n\n{text}" if own else text}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def _invalid(param: str, problem: str) -> InvalidRequest:
    return InvalidRequest(f"{param} {problem}", param=param)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
