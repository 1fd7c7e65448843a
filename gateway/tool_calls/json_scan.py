"""Incremental JSON helpers shared by the tool-call parsers (pure, stdlib only).

Every helper decides only from characters it has seen and answers "not yet" when the decision needs more,
so a parser built on them gives the same result however its text was split into pieces.
"""

from __future__ import annotations

import json
import re

from gateway.tool_calls.parser_types import ToolCall

_OUTSIDE = re.compile(r'[{}"]')  # the only characters that matter outside a string
_INSIDE = re.compile(r'["\\]')  # ... and inside one
_SIMPLE_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_HEX = frozenset("0123456789abcdefABCDEF")
_INCOMPLETE, _INVALID = -1, -2


class ObjectScanner:
    """Finds where a JSON object that starts at text[start] == "{" ends, as text grows.

    Counts braces outside strings (a string is skipped with its escapes), so a brace inside an argument string
    does not end the object. It only delimits: the caller parses the slice, which may still be invalid JSON.
    State is kept between calls, so feeding a growing text token by token costs linear time overall.
    """

    def __init__(self, start: int) -> None:
        self.pos = start
        self.depth = 0
        self.in_string = False

    def advance(self, text: str) -> int | None:
        """Index just past the object's closing brace, or None while it has not closed."""
        while True:
            if self.in_string:
                m = _INSIDE.search(text, self.pos)
                if m is None:
                    self.pos = len(text)
                    return None
                if m.group() == "\\":
                    if m.end() >= len(text):  # the escaped character has not arrived: look at it next time
                        self.pos = m.start()
                        return None
                    self.pos = m.end() + 1
                    continue
                self.in_string, self.pos = False, m.end()
                continue
            m = _OUTSIDE.search(text, self.pos)
            if m is None:
                self.pos = len(text)
                return None
            self.pos = m.end()
            if m.group() == '"':
                self.in_string = True
            elif m.group() == "{":
                self.depth += 1
            else:
                self.depth -= 1
                if self.depth == 0:
                    return self.pos


def string_end(text: str, start: int) -> int | None:
    """Index just past the JSON string that opens with the quote at text[start], or None if not closed yet."""
    pos = start + 1
    while True:
        m = _INSIDE.search(text, pos)
        if m is None:
            return None
        if m.group() == '"':
            return m.end()
        pos = m.end() + 1
        if pos > len(text):
            return None


def _hex4(text: str, at: int) -> int:
    digits = text[at : at + 4]
    if any(c not in _HEX for c in digits):
        return _INVALID
    return int(digits, 16) if len(digits) == 4 else _INCOMPLETE


def decode_string_part(text: str, pos: int) -> tuple[str, int, bool]:
    """Decode the body of a JSON string from text[pos] as far as the text allows.

    Returns (decoded text, position after what was consumed, whether the closing quote was consumed). An
    escape whose end has not arrived (`\\`, `\\u00`, a high surrogate whose `\\uDCxx` partner may follow) is
    not consumed, so the caller holds it back until it completes. Lenient where JSON is strict: an invalid
    escape is kept as literal text, a lone surrogate becomes U+FFFD (so the text always encodes as UTF-8),
    and raw control characters pass through.
    """
    out: list[str] = []
    n = len(text)
    while pos < n:
        m = _INSIDE.search(text, pos)
        if m is None:
            out.append(text[pos:])
            pos = n
            break
        out.append(text[pos : m.start()])
        pos = m.start()
        if m.group() == '"':
            return "".join(out), pos + 1, True
        if pos + 1 >= n:
            break
        kind = text[pos + 1]
        if kind in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[kind])
            pos += 2
            continue
        code = _hex4(text, pos + 2) if kind == "u" else _INVALID
        if code == _INCOMPLETE:
            break
        if code == _INVALID:
            out.append("\\")
            pos += 1
            continue
        if 0xD800 <= code < 0xDC00:
            low = _low_surrogate(text, pos + 6)
            if low == _INCOMPLETE:
                break
            if low >= 0:
                out.append(chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)))
                pos += 12
                continue
            code = 0xFFFD
        elif 0xDC00 <= code < 0xE000:
            code = 0xFFFD
        out.append(chr(code))
        pos += 6
    return "".join(out), pos, False


def _low_surrogate(text: str, at: int) -> int:
    """The low surrogate escaped at text[at:at+6], _INCOMPLETE if it may still arrive, else _INVALID."""
    lead = text[at : at + 2]
    if not "\\u".startswith(lead):
        return _INVALID
    if len(lead) < 2:
        return _INCOMPLETE
    code = _hex4(text, at + 2)
    if code == _INCOMPLETE:
        return _INCOMPLETE
    return code if 0xDC00 <= code < 0xE000 else _INVALID


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")  # Python's json would accept NaN/Infinity


def decode_call(text: str, tool_names: frozenset[str]) -> ToolCall | None:
    """The call in text (a JSON object with "name" and "arguments" or "parameters"), or None if it is not one.

    Not a call: invalid JSON, not an object, a name not in tool_names, arguments missing or not an object.
    """
    try:
        obj = json.loads(text, strict=False, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    name = obj.get("name")
    args = obj["arguments"] if "arguments" in obj else obj.get("parameters")
    if not isinstance(name, str) or name not in tool_names or not isinstance(args, dict):
        return None
    return ToolCall(name, canonical_json(args))


def canonical_json(obj: object) -> str:
    text = json.dumps(obj, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a "\udXXX" escape: keep it escaped so it can be sent
        text = json.dumps(obj)
    return text
