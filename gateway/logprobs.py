"""Log-probability entries of one choice, released with the text they belong to (pure, no I/O).

The engine sends, per response, one entry per generated token (`EnsembleResponse.logprobs`, JSON, format in
`paddlellm.protocol.LOGPROBS`): `{"id", "token", "bytes", "logprob", "rank", "top_logprobs": [...]}`, and
on a request's first response the prompt's entries when asked (the first null). The text reaches the client
through the stop-string filter, which holds text back and may cut it, so entries cannot simply ride with
the response that brought them.

Algorithm: every entry gets the byte span `[start, end)` its `bytes` take in the choice's text (entries
follow each other). An entry is released once the emitted text covers its end, so a chunk carries the
entries of the text it carries. At a stop-string cut, an entry straddling the cut is trimmed to its bytes
inside the text and later ones are dropped; so joining the `bytes` of all released entries gives the text's
UTF-8 exactly (when the engine's token bytes are the text the detokenizer produced, which they are). Each
released entry also gets its character offset in the text (completions' `text_offset`).
"""

from __future__ import annotations

import json
import math
from collections import deque
from typing import Any

from gateway.openai_schema import PromptLogprobs, TokenLogprob, TopLogprob
from paddlellm.protocol import token_text

Entry = dict[str, Any]  # one entry of the engine's JSON
FLOOR = -9999.0  # JSON has no -inf: vLLM's stand-in for a token of probability 0


def parse(text: str) -> tuple[list[Entry], list[Entry | None] | None]:
    """The engine's logprobs JSON -> (content entries, prompt entries or None)."""
    if not text:
        return [], None
    data = json.loads(text)
    return list(data.get("content") or ()), data.get("prompt")


def _lp(value: float) -> float:
    return value if math.isfinite(value) else FLOOR


def with_first(prompt: list[Entry | None], prompt_text: str) -> list[Entry | None]:
    """The echoed prompt's entries: the first token (null in the engine's list) gets the bytes of the
    prompt before the second token's, so its `token` and text offset can be shown (logprob null)."""
    whole = prompt_text.encode("utf-8")
    rest = b"".join(bytes(e["bytes"]) for e in prompt[1:] if e is not None)
    head = whole[: len(whole) - len(rest)] if whole.endswith(rest) else b""
    first: Entry = {"token": token_text(head), "bytes": list(head), "logprob": None, "top_logprobs": None}
    return [first, *prompt[1:]]


class EntryAligner:
    """One choice's entries against its emitted text: add() as they arrive, release() with each text."""

    def __init__(self) -> None:
        self._pending: deque[tuple[int, int, Entry]] = deque()
        self._fed = 0  # end of the last added entry, in bytes of the text
        self._text = bytearray()  # the text emitted so far (UTF-8)
        self._cursor = (0, 0)  # (byte, character) offsets of the last released entry's start

    def add(self, entries: list[Entry]) -> None:
        for e in entries:
            end = self._fed + len(e["bytes"])
            self._pending.append((self._fed, end, e))
            self._fed = end

    def release(self, text: str) -> list[tuple[Entry, int]]:
        """The text emitted now -> the entries it completes, each with its character offset."""
        if text:
            self._text += text.encode("utf-8")
        out = []
        while self._pending and self._pending[0][1] <= len(self._text):
            start, _, e = self._pending.popleft()
            out.append((e, self._char_at(start)))
        return out

    def sync(self) -> None:
        """Later entries start at the end of the text emitted so far (after an echoed prompt)."""
        self._fed = len(self._text)

    def cut(self) -> list[tuple[Entry, int]]:
        """The text ended at a stop string: trim the straddling entry to the text, drop the rest."""
        emitted = len(self._text)
        out = []
        if self._pending and self._pending[0][0] < emitted:
            start, _, e = self._pending[0]
            inside = bytes(e["bytes"][: emitted - start])
            out.append(({**e, "bytes": list(inside), "token": token_text(inside)}, self._char_at(start)))
        self._pending.clear()
        return out

    def finish(self, drop_uncovered_last: bool) -> list[tuple[Entry, int]]:
        """The generation ended: release what is left (text and bytes disagreeing, or bytes held back).
        `drop_uncovered_last`: the last entry is the stop token's, left out unless its text was emitted."""
        pending = list(self._pending)
        self._pending.clear()
        if drop_uncovered_last and pending and pending[-1][0] >= len(self._text):
            pending.pop()
        return [(e, self._char_at(min(start, len(self._text)))) for start, _, e in pending]

    def _char_at(self, byte: int) -> int:
        """Characters that start before `byte` (UTF-8 lead bytes), counted on from the last call."""
        b0, c0 = self._cursor
        if byte < b0:  # only for a trimmed entry released twice: not expected
            b0, c0 = 0, 0
        chars = c0 + sum(1 for x in self._text[b0:byte] if x & 0xC0 != 0x80)
        self._cursor = (byte, chars)
        return chars


def chat_entry(e: Entry, top: int) -> TokenLogprob:
    alternatives = [
        TopLogprob(token=t["token"], logprob=_lp(t["logprob"]), bytes=t["bytes"])
        for t in (e.get("top_logprobs") or ())[:top]
    ]
    return TokenLogprob(
        token=e["token"], logprob=_lp(e["logprob"]), bytes=e["bytes"], top_logprobs=alternatives
    )


def completion_top(e: Entry, top: int) -> dict[str, float] | None:
    """OpenAI completions' top_logprobs entry: the top `top` tokens and the chosen one (vLLM's choice)."""
    if e.get("logprob") is None:
        return None
    out = {t["token"]: _lp(t["logprob"]) for t in (e.get("top_logprobs") or ())[:top]}
    out.setdefault(e["token"], _lp(e["logprob"]))
    return out


def completion_logprob(e: Entry) -> float | None:
    return None if e.get("logprob") is None else _lp(e["logprob"])


def vllm_prompt_logprobs(prompt: list[Entry | None], top: int) -> PromptLogprobs:
    """vLLM's `prompt_logprobs`: per prompt token null (the first) or {id: {logprob, rank, decoded_token}}
    for the prompt's token and the top `top` alternatives."""
    out: PromptLogprobs = []
    for e in prompt:
        if e is None:
            out.append(None)
            continue
        d = {
            str(t["id"]): {"logprob": _lp(t["logprob"]), "rank": rank, "decoded_token": t["token"]}
            for rank, t in enumerate((e.get("top_logprobs") or ())[:top], start=1)
        }
        d.setdefault(
            str(e["id"]), {"logprob": _lp(e["logprob"]), "rank": e.get("rank"), "decoded_token": e["token"]}
        )
        out.append(d)  # type: ignore[arg-type]  # PromptLogprob's keys
    return out
