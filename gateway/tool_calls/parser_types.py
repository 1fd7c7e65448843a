"""The values a streaming tool-call parser returns, and the protocol every parser implements (stdlib only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ToolCall:
    name: str
    # The arguments object as JSON text, json.dumps(obj, ensure_ascii=False) of the parsed object: canonical,
    # so a streamed call equals the same call parsed from the whole text.
    arguments: str


@dataclass(frozen=True)
class ParsedDelta:
    content: str = ""  # text that is plain content, in order
    calls: tuple[ToolCall, ...] = ()  # calls completed by this feed, in order
    # Within one delta, content comes before the calls: text before a call is released no later than it.


class ToolCallParser(Protocol):
    """Feed the model's visible output text piece by piece; finish() when the generation ends.

    For any split of the same text into pieces, the concatenated content and the list of calls are the same.
    Nothing is lost or duplicated: text that is not a call comes back as content verbatim.
    """

    def feed(self, text: str) -> ParsedDelta: ...

    def finish(self) -> ParsedDelta: ...

    @property
    def calls_emitted(self) -> int: ...


class BufferedParser:
    """The plumbing the parsers share: text not yet resolved accumulates in `_buf`; `_drain(final)` releases
    what is decided (final: the generation ended, decide everything)."""

    def __init__(self, tool_names: frozenset[str]) -> None:
        self._tool_names = tool_names
        self._buf = ""
        self._emitted = 0

    @property
    def calls_emitted(self) -> int:
        return self._emitted

    def feed(self, text: str) -> ParsedDelta:
        self._buf += text
        return self._drain(final=False)

    def finish(self) -> ParsedDelta:
        return self._drain(final=True)

    def _drain(self, final: bool) -> ParsedDelta:
        raise NotImplementedError
