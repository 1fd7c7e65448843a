"""Split a reasoning model's thinking (between its template's markers, e.g. <think>...</think>) from content.

Streaming and pure: feed text deltas, get (reasoning, content) deltas. A tail that could still grow into a
marker is held back until it cannot, so markers never leak into either field.
"""

from __future__ import annotations

from gateway.markers import partial_tail


class ReasoningSplitter:
    """States: `pre` (output may still open with the start marker, after optional whitespace),
    `reasoning` (inside the block, until the end marker), `content` (everything after)."""

    def __init__(self, start: str, end: str, starts_inside: bool = False) -> None:
        self.start, self.end = start, end
        self.state = "reasoning" if starts_inside else "pre"
        self.buf = ""

    def feed(self, text: str) -> tuple[str, str]:
        self.buf += text
        reasoning, content = [], []
        while self.buf:
            if self.state == "pre":
                head = self.buf.lstrip()
                if head.startswith(self.start):
                    self.buf = head[len(self.start) :]
                    self.state = "reasoning"
                elif self.start.startswith(head):
                    break  # whitespace or a partial marker so far: wait
                else:
                    self.state = "content"
            elif self.state == "reasoning":
                idx = self.buf.find(self.end)
                if idx >= 0:
                    reasoning.append(self.buf[:idx])
                    self.buf = self.buf[idx + len(self.end) :]
                    self.state = "content"
                else:
                    keep = partial_tail(self.buf, self.end)
                    reasoning.append(self.buf[: len(self.buf) - keep])
                    self.buf = self.buf[len(self.buf) - keep :]
                    break
            else:
                content.append(self.buf)
                self.buf = ""
        return "".join(reasoning), "".join(content)

    def flush(self) -> tuple[str, str]:
        """The generation ended: an unterminated block stays reasoning, anything else is content."""
        rest, self.buf = self.buf, ""
        return (rest, "") if self.state == "reasoning" else ("", rest)
