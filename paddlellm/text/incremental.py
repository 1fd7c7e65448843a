"""The pure streaming detokenizer step (the engine -> detokenizer contract of
`docs/architecture.md`, "Request path", step 4).

An ensemble step keeps no per-request state, so the engine sends a window: the last few already-emitted ids
followed by this step's new ids, and `prefix_len`, how many of them are already emitted. The text delta is

    decode(window[start : new_end]) minus decode(window[start : old_end])

where `start` is the first token in the prefix that begins a UTF-8 character, and `old_end`/`new_end` cut off
an incomplete UTF-8 character at the end of the prefix/window (held back until it completes, or until the
final step). Both decodes begin at the same token, so whatever the decoder does at the start of a string
(SentencePiece strips one leading space; a window cut through a character would decode it as U+FFFD) happens
to both and cancels. Holding back is decided from the tokens' raw bytes, never from U+FFFD in the text: a
real U+FFFD, or invalid bytes, would otherwise be held forever and fall out of the window.

How much context the engine must send: an incomplete character is at most 3 bytes, so at most 3 held
tokens; the first of them starts the character. With SentencePiece, a leading-space token needs one
already-emitted token before it so that the start-of-string strip cancels. So context >= 4 is enough for any
valid UTF-8 output; make_window's default of 6 leaves margin (tests/unit/test_text_incremental.py shows
context 2 failing on a 4-byte emoji spelled in byte-fallback tokens). Invalid byte sequences (random models)
decode to U+FFFD everywhere, but their count can differ from decode(all ids): SentencePiece's byte fallback
turns a whole run of byte tokens into U+FFFDs when any of it is invalid, which no bounded window can see.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

DEFAULT_CONTEXT = 6


class DetokTokenizer(Protocol):
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...

    def token_bytes(self, token_id: int) -> bytes: ...


def make_window(
    all_output_ids: Sequence[int], num_old: int, context: int = DEFAULT_CONTEXT
) -> tuple[list[int], int]:
    """(window_ids, prefix_len) for a step: up to `context` already-emitted ids, then the new ones.

    all_output_ids holds every id generated so far including this step's; the first num_old were sent before.
    """
    if not 0 <= num_old <= len(all_output_ids):
        raise ValueError(f"num_old={num_old} is outside 0..{len(all_output_ids)}")
    start = max(0, num_old - context)
    return list(all_output_ids[start:]), num_old - start


def detokenize_step(
    tokenizer: DetokTokenizer, window_ids: Sequence[int], prefix_len: int, final: bool
) -> str:
    """The text delta for one step (see the module docstring); "" while only an incomplete char arrived."""
    ids = list(window_ids)
    if not 0 <= prefix_len <= len(ids):
        raise ValueError(f"prefix_len={prefix_len} is outside 0..{len(ids)}")
    start = _clean_start(tokenizer, ids, prefix_len)
    old_end = prefix_len - _incomplete_tail_tokens(tokenizer, ids, start, prefix_len)
    new_end = len(ids) if final else len(ids) - _incomplete_tail_tokens(tokenizer, ids, start, len(ids))
    if new_end <= old_end:
        return ""
    old_text = tokenizer.decode(ids[start:old_end], skip_special_tokens=True) if old_end > start else ""
    new_text = tokenizer.decode(ids[start:new_end], skip_special_tokens=True)
    # For valid UTF-8 old_text is a prefix of new_text; with invalid bytes it may not be (see above).
    return new_text[len(old_text) :]


def _clean_start(tokenizer: DetokTokenizer, ids: list[int], prefix_len: int) -> int:
    """The first prefix token that does not begin with a UTF-8 continuation byte (0 if there is none)."""
    for i in range(prefix_len):
        raw = tokenizer.token_bytes(ids[i])
        if not raw or raw[0] & 0xC0 != 0x80:
            return i
    return 0


def _incomplete_tail_tokens(tokenizer: DetokTokenizer, ids: list[int], start: int, end: int) -> int:
    """How many of ids[start:end]'s last tokens carry an unfinished UTF-8 character (0 if none)."""
    tail = b""
    count = 0
    for k in range(end - 1, start - 1, -1):
        tail = tokenizer.token_bytes(ids[k]) + tail
        count += 1
        if len(tail) >= 4:
            break
    missing = incomplete_utf8_suffix(tail)
    if missing == 0:
        return 0
    # The fewest trailing tokens whose bytes cover the unfinished character.
    covered = 0
    for n in range(1, count + 1):
        covered += len(tokenizer.token_bytes(ids[end - n]))
        if covered >= missing:
            return n
    return count


def incomplete_utf8_suffix(data: bytes) -> int:
    """Length of a trailing lead byte plus its continuation bytes when the character is not finished yet."""
    for k in range(1, min(3, len(data)) + 1):
        byte = data[-k]
        if byte & 0xC0 == 0x80:  # continuation byte: keep looking for the lead byte
            continue
        if 0xC2 <= byte <= 0xDF:
            need = 2
        elif 0xE0 <= byte <= 0xEF:
            need = 3
        elif 0xF0 <= byte <= 0xF4:
            need = 4
        else:  # ASCII or a byte that can never start a character
            return 0
        return k if need > k else 0
    return 0
