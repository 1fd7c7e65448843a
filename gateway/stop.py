"""Stop strings, matched over the whole generated text (a pure matcher).

Token boundaries say nothing about where a stop string starts, so the gateway matches on text and holds
back any tail that could still grow into a match; held text is released once it cannot.
"""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]

    def find(self, text: str, start: int = 0) -> int | None:
        """Index of the earliest stop string in text[start:] (as an index into text), or None."""
        hits = [i for i in (text.find(s, start) for s in self.stops) if i >= 0]
        return min(hits) if hits else None

    def held_len(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        best = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:k]):
                    best = k
                    break
        return best


class StopFilter:
    """Streaming: feed text deltas, get the text that is safe to emit; stops at the first match.

    Algorithm: keep the whole text and how much was emitted. Emitted text never holds a stop string nor a
    tail that could start one, so a match can only begin at or after the emitted length; search there.
    Without a match, emit everything except the longest tail that is a prefix of a stop string.
    """

    def __init__(self, stops: list[str]) -> None:
        self.matcher = StopMatcher(stops)
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def feed(self, delta: str) -> str:
        if self.stopped:
            return ""
        self.text += delta
        if not self.matcher.stops:
            return self._emit(len(self.text))
        hit = self.matcher.find(self.text, self.emitted)
        if hit is not None:
            self.stopped = True
            return self._emit(hit)
        return self._emit(len(self.text) - self.matcher.held_len(self.text))

    def flush(self) -> str:
        """The generation ended without a match: release what was held back."""
        return "" if self.stopped else self._emit(len(self.text))

    def _emit(self, end: int) -> str:
        out = self.text[self.emitted : end]
        self.emitted = max(self.emitted, end)
        return out
