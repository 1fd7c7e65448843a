"""The llama3_json tool-call format (Llama 3.1 / 3.2):
`[<|python_tag|>]{"name": ..., "parameters": {...}}; {...}`.
"""

from __future__ import annotations

from gateway.markers import partial_tail
from gateway.tool_calls.json_scan import ObjectScanner, decode_call
from gateway.tool_calls.parser_types import BufferedParser, ParsedDelta, ToolCall

TAG = "<|python_tag|>"


class Llama3JsonParser(BufferedParser):
    """Algorithm: three modes over `_buf`, the text not yet resolved.

    `start`: the output may open with whitespace, then `{` or `<|python_tag|>`; hold it while it still can.
    Any other first character makes it plain content, streamed as it comes.
    `content`: release text up to a tail that could begin `<|python_tag|>`; a complete tag starts `calls`
    (the text before it is content).
    `calls`: `_buf` holds everything since the last call (for the first object: since the output's start or
    the tag). Skip separators (whitespace; `;` between calls, also accepted absent), then delimit the next
    `{...}` with an ObjectScanner and validate it: a call is emitted and dropped from `_buf`. Anything else
    (an invalid object, a character that cannot start one, an object cut by the end) ends the calls: the held
    text is released verbatim as content (the whole text if the first object failed) and the rest is parsed
    in `content` mode. Separators left after the last call are dropped at finish().
    """

    def __init__(self, tool_names: frozenset[str]) -> None:
        super().__init__(tool_names)
        self._mode = "start"
        self._pos = 0  # in `calls`: where scanning continues in _buf
        self._scanner: ObjectScanner | None = None  # in `calls`: the object being delimited
        self._first = True  # in `calls`: no object of this run was a call yet

    def _drain(self, final: bool) -> ParsedDelta:
        content: list[str] = []
        calls: list[ToolCall] = []
        while self._buf:
            if self._mode == "start":
                head = self._buf.lstrip()
                skipped = len(self._buf) - len(head)
                if head.startswith("{"):
                    self._start_calls(skipped)
                elif head.startswith(TAG):
                    self._start_calls(skipped + len(TAG))
                elif TAG.startswith(head) and not final:
                    break  # whitespace, or a partial tag: wait
                else:
                    self._mode = "content"
            elif self._mode == "content":
                at = self._buf.find(TAG)
                if at >= 0:
                    content.append(self._buf[:at])
                    self._buf = self._buf[at:]
                    self._start_calls(len(TAG))
                    continue
                keep = 0 if final else partial_tail(self._buf, TAG)
                content.append(self._buf[: len(self._buf) - keep])
                self._buf = self._buf[len(self._buf) - keep :]
                break
            elif not self._step_calls(final, content, calls):
                break
        return ParsedDelta("".join(content), tuple(calls))

    def _start_calls(self, pos: int) -> None:
        self._mode, self._pos, self._first, self._scanner = "calls", pos, True, None

    def _step_calls(self, final: bool, content: list[str], calls: list[ToolCall]) -> bool:
        """One step in `calls` mode; False when it must wait for more text (or the output ended)."""
        buf = self._buf
        if self._scanner is None:
            seps = " \t\r\n\f\v" if self._first else " \t\r\n\f\v;"
            pos = self._pos
            while pos < len(buf) and buf[pos] in seps:
                pos += 1
            self._pos = pos
            if pos == len(buf):
                if final:  # only a prefix (whitespace, the tag) or separators after calls remain
                    if self._first:
                        content.append(buf)
                    self._buf = ""
                return False
            if buf[pos] != "{":
                self._fail(pos, content)
                return True
            self._scanner = ObjectScanner(pos)
        end = self._scanner.advance(buf)
        if end is None:
            if final:
                self._fail(len(buf), content)
                return True
            return False
        call = decode_call(buf[self._pos : end], self._tool_names)
        if call is None:
            self._fail(end, content)
            return True
        calls.append(call)
        self._emitted += 1
        self._buf, self._pos, self._first, self._scanner = buf[end:], 0, False, None
        return True

    def _fail(self, upto: int, content: list[str]) -> None:
        """The calls ended: the held text up to `upto` is content, the rest is parsed as content."""
        content.append(self._buf[:upto])
        self._buf, self._mode, self._scanner = self._buf[upto:], "content", None
