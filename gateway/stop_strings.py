"""Stop strings over a stream of text deltas (pure, stdlib only). The gateway applies them: the engine never
sees stop strings.

A stop string can straddle deltas, so the matcher holds back the longest tail of the text that is still a
prefix of some stop string and releases it once it cannot become one. Text up to the earliest match is
emitted; the stop string itself and everything after it are not (OpenAI semantics).
"""

from __future__ import annotations

from collections.abc import Iterable


class StopStringMatcher:
    """feed(delta) -> (text to emit, stopped); flush() -> the same, when generation ends.

    Algorithm: emitted text never ends with a stop-string prefix, so a match can only start inside the
    pending (held + new) text. Find the earliest complete match and the earliest start of a possible match
    (the longest suffix that is a proper prefix of a stop string). Stop at the complete match unless the
    possible one starts before it (a longer stop string may still complete there: wait for more text);
    otherwise emit everything before the possible match. The result does not depend on how the text was
    split into deltas.
    """

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = tuple(dict.fromkeys(s for s in stops if s))  # dedupe, drop "", keep order
        self.pending = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the stream

    def feed(self, delta: str) -> tuple[str, bool]:
        return self._cut(self.pending + delta, final=False)

    def flush(self) -> tuple[str, bool]:
        """The generation ended: release the held tail (it may still hold a complete match)."""
        return self._cut(self.pending, final=True)

    def _cut(self, text: str, final: bool) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        possible = len(text) if final else len(text) - self._held_len(text)
        hit = self._earliest(text)
        if hit is not None and hit[0] <= possible:
            self.pending, self.stopped, self.matched = "", True, hit[1]
            return text[: hit[0]], True
        self.pending = text[possible:]
        return text[:possible], False

    def _earliest(self, text: str) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for stop in self.stops:
            i = text.find(stop)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, stop)
        return best

    def _held_len(self, text: str) -> int:
        """Length of the longest suffix of text that is a proper prefix of some stop string."""
        best = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:k]):
                    best = k
                    break
        return best
