"""The hermes tool-call format (Qwen2.5, Qwen3, Hermes):
`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, one or more, possibly after some text.
"""

from __future__ import annotations

from gateway.markers import partial_tail
from gateway.tool_calls.json_scan import decode_call
from gateway.tool_calls.parser_types import BufferedParser, ParsedDelta, ToolCall

OPEN, CLOSE = "<tool_call>", "</tool_call>"


class HermesParser(BufferedParser):
    """Algorithm: `_buf` holds the text not yet resolved; everything before it has been released.

    Outside a block, release the text up to the longest tail that could still begin `<tool_call>`. A block
    runs from `<tool_call>` to the first `</tool_call>`; it is held whole and resolved when it closes: its
    JSON is a call, or the raw block is content. So a call is emitted complete or not at all.

    Whitespace around calls: a segment (the output's start, or the text right after a call) that is only
    whitespace so far is held. If a block follows and is a call, the whitespace is dropped; if non-space text
    follows (or the block is malformed), the whitespace is released with it verbatim. At finish(), a trailing
    whitespace-only segment is dropped when calls were emitted and is content when there were none.

    At finish(), a block that never closed is a call if its JSON is a complete valid call (a model may stop
    without the closing tag, or be cut inside the tag), else its raw text is content.
    """

    def __init__(self, tool_names: frozenset[str]) -> None:
        super().__init__(tool_names)
        self._block_at: int | None = None  # index of `<tool_call>` in _buf while inside a block
        self._search_from = 0  # where to look for `</tool_call>` next: earlier text cannot hold it
        self._fresh = True  # at a segment start: leading whitespace is held

    def _drain(self, final: bool) -> ParsedDelta:
        content: list[str] = []
        calls: list[ToolCall] = []
        while self._buf:
            if self._block_at is not None:
                if not self._resolve_block(final, content, calls):
                    break
                continue
            at = self._buf.find(OPEN)
            if at >= 0:
                head = self._buf[:at]
                if self._fresh and not head.strip():
                    self._block_at = at  # hold the whitespace with the block: dropped if it is a call
                else:
                    content.append(head)
                    self._buf, self._block_at, self._fresh = self._buf[at:], 0, False
                continue
            if final:
                if not (self._fresh and self._buf.isspace() and self._emitted):
                    content.append(self._buf)
                self._buf = ""
                break
            head = self._buf[: len(self._buf) - partial_tail(self._buf, OPEN)]
            if not (self._fresh and not head.strip()):
                content.append(head)
                self._buf, self._fresh = self._buf[len(head) :], False
            break
        return ParsedDelta("".join(content), tuple(calls))

    def _resolve_block(self, final: bool, content: list[str], calls: list[ToolCall]) -> bool:
        """Resolve the block at _block_at if it closed (or the output ended); False to wait for more text."""
        assert self._block_at is not None
        body_at = self._block_at + len(OPEN)
        close = self._buf.find(CLOSE, max(body_at, self._search_from))
        if close >= 0:
            body, end = self._buf[body_at:close], close + len(CLOSE)
        elif final:
            body = self._buf[body_at:].rstrip()
            body, end = body[: len(body) - partial_tail(body, CLOSE)], len(self._buf)
        else:
            self._search_from = len(self._buf) - len(CLOSE) + 1
            return False
        call = decode_call(body, self._tool_names)
        if call is None:
            content.append(self._buf[:end])
            self._fresh = False
        else:
            calls.append(call)
            self._emitted += 1
            self._fresh = True
        self._buf, self._block_at, self._search_from = self._buf[end:], None, 0
        return True
