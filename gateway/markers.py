"""Streamed text and the markers inside it (reasoning blocks, tool-call tags): how much of a text's end to
hold back because it could still grow into a marker."""

from __future__ import annotations


def partial_tail(text: str, marker: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of marker (0 if none)."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0
