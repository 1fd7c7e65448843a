"""The packed token bitmask: the one format a grammar's allowed-token set travels in.

Layout (llguidance's and xgrammar's): int32 words, ceil(vocab_size / 32) per row; token t is allowed iff bit
(t % 32) of word (t // 32) is set (least significant bit first, so the row read as little-endian bytes is
`np.packbits(allowed, bitorder="little")`). 49,152 tokens are 6 KiB per row: cheap to send with a step to
TP ranks. Bits past vocab_size are 0.

`apply_token_bitmask` is the numpy reference for the sampler: disallowed logits become -inf, before
temperature, top-k/top-p and penalties, so a draw can only land on an allowed token.
"""

from __future__ import annotations

import numpy as np


def mask_words(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def allocate_token_bitmask(batch: int, vocab_size: int) -> np.ndarray:
    """(batch, words) int32, all tokens allowed (a row without a grammar stays like this)."""
    return np.full((batch, mask_words(vocab_size)), -1, dtype=np.int32)


def unpack_token_bitmask(words: np.ndarray, vocab_size: int) -> np.ndarray:
    """bool (..., vocab_size): True where allowed."""
    words = np.ascontiguousarray(words, dtype=np.int32)
    bits = np.unpackbits(words.view(np.uint8), axis=-1, bitorder="little")
    return bits[..., :vocab_size].astype(bool)


def pack_token_bitmask(allowed: np.ndarray) -> np.ndarray:
    """The inverse of unpack: bool (..., vocab_size) -> int32 (..., words)."""
    vocab = allowed.shape[-1]
    pad = mask_words(vocab) * 32 - vocab
    if pad:
        allowed = np.concatenate([allowed, np.zeros((*allowed.shape[:-1], pad), dtype=bool)], axis=-1)
    packed = np.packbits(allowed.astype(bool), axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view(np.int32)


def apply_token_bitmask(logits: np.ndarray, words: np.ndarray) -> None:
    """In place: logits (batch, vocab) float; words (batch, words) int32. Disallowed -> -inf."""
    allowed = unpack_token_bitmask(words, logits.shape[-1])
    np.putmask(logits, ~allowed, -np.inf)
