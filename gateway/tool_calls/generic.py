"""The generic tool-call format, for chat templates without tool support (as llama.cpp does): the answer is
constrained to one JSON object, `{"tool_calls": [{"name": ..., "arguments": {...}}, ...]}` or
`{"content": "..."}`.
"""

from __future__ import annotations

from gateway.tool_calls.json_scan import ObjectScanner, decode_call, decode_string_part, string_end
from gateway.tool_calls.parser_types import BufferedParser, ParsedDelta, ToolCall

_WS = " \t\r\n"


class GenericParser(BufferedParser):
    """Algorithm: a hand-written incremental parser over the whole text, `_pos` its cursor.

    States follow the object: `open` `{`, `key` ("tool_calls" or "content"), `colon`, `value` (`[` or `"`),
    then either `array` (separators, `]`) / `element` (one `{...}` delimited by an ObjectScanner, emitted as
    a call once it closes and validates), or `string` (the content, decoded and streamed as it arrives; an
    escape not complete yet is held back), then `close` (`}`) and `done` (trailing whitespace, dropped).
    A state only moves on a character it has seen, so any split of the text gives the same result.

    `_raw_from` marks the end of what has been emitted (a call, decoded content, the value's end). Anything
    that does not fit (plain text, another key, an invalid call, trailing text) switches to `raw`: the text
    from `_raw_from` on is content verbatim, now and for the rest of the output. So plain text streams as it
    comes; a first element that is not a call makes the whole text content; an invalid or cut later element
    keeps the calls already emitted and its raw tail (from the `,` after the last call) becomes content. A
    content string cut by the end keeps what was streamed, plus a held partial escape verbatim. An answer
    cut after its value, before the final `}`, is complete: nothing more is content.
    """

    def __init__(self, tool_names: frozenset[str]) -> None:
        super().__init__(tool_names)
        self._pos = 0
        self._raw_from = 0
        self._state = "open"
        self._key = ""
        self._scanner: ObjectScanner | None = None

    def _drain(self, final: bool) -> ParsedDelta:
        content: list[str] = []
        calls: list[ToolCall] = []
        while self._state != "raw" and self._step(content, calls):
            pass
        if self._state == "raw" or (final and self._state not in ("close", "done")):
            content.append(self._buf[self._raw_from :])  # at finish, `close`/`done` hold only whitespace
            self._raw_from = self._pos = len(self._buf)
        return ParsedDelta("".join(content), tuple(calls))

    def _step(self, content: list[str], calls: list[ToolCall]) -> bool:
        """Consume what the current state can; False when it needs more text."""
        text, state = self._buf, self._state
        if state == "string":
            decoded, self._pos, closed = decode_string_part(text, self._pos)
            content.append(decoded)
            self._raw_from = self._pos
            if closed:
                self._state = "close"
            return closed
        if state == "element":
            assert self._scanner is not None
            end = self._scanner.advance(text)
            if end is None:
                return False
            call = decode_call(text[self._pos : end], self._tool_names)
            if call is None:
                return self._to_raw()
            calls.append(call)
            self._emitted += 1
            self._pos = self._raw_from = end
            self._state = "array"
            return True
        while self._pos < len(text) and text[self._pos] in _WS:
            self._pos += 1
        if self._pos == len(text):
            return False
        char = text[self._pos]
        if state == "key":
            return self._read_key() if char == '"' else self._to_raw()
        nxt = self._next_state(state, char)
        if nxt == "raw":
            return self._to_raw()
        if nxt == "element":
            self._scanner = ObjectScanner(self._pos)  # the scanner reads the `{` itself
        else:
            self._pos += 1
        if char in "]}":
            self._raw_from = self._pos  # the value (or the object) ended: what follows is not part of it
        self._state = nxt
        return True

    def _to_raw(self) -> bool:
        self._state = "raw"
        return False

    def _next_state(self, state: str, char: str) -> str:
        match state, char:
            case "open", "{":
                return "key"
            case "colon", ":":
                return "value"
            case "value", "[" if self._key == "tool_calls":
                return "array"
            case "value", '"' if self._key == "content":
                return "string"
            case "array", ",":
                return "array"
            case "array", "{":
                return "element"
            case "array", "]":
                return "close"
            case "close", "}":
                return "done"
        return "raw"

    def _read_key(self) -> bool:
        end = string_end(self._buf, self._pos)
        if end is None:
            return False
        key, _, closed = decode_string_part(self._buf, self._pos + 1)
        if not closed or key not in ("tool_calls", "content"):
            return self._to_raw()
        self._key, self._pos, self._state = key, end, "colon"
        return True
