"""Helpers of the structured-output tests: their tokenizers and the seeded random walk through a grammar.

The walk is the oracle's input: it draws uniformly among the tokens the mask allows (seeded), checks each mask
against the grammar's own claims (padding never allowed, EOS allowed exactly when the grammar accepts), and
stops when the matcher terminates or EOS is drawn. Past `finish_after` steps it prefers closing tokens
(a quote, a bracket, EOS) when the mask allows one, so grammars with unbounded strings or nesting end too;
every choice is still an allowed token, so the output must still match.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from paddlellm.structured.bitmask import unpack_token_bitmask
from paddlellm.structured.compiler import CompiledGrammar
from paddlellm.structured.tokenizer_info import TokenizerInfo
from paddlellm.text.tokenizer import TextTokenizer

LLAMA2_EOS = 2
LLAMA2_PADDED_ROWS = 32064  # 32,000 pieces + 64 padding rows: the padding must never be allowed


@dataclass(frozen=True)
class Vocab:
    """One tokenizer as the tests use it: the grammar's view and the project's decoder."""

    info: TokenizerInfo
    text: TextTokenizer
    closers: frozenset[int]  # tokens that are exactly '"', '}' or ']'


def make_vocab(info: TokenizerInfo, text: TextTokenizer) -> Vocab:
    closers = frozenset(
        i for i in range(text.vocab_size) if text.token_bytes(i) in (b'"', b"}", b"]")
    ) | frozenset(info.eos_token_ids)
    return Vocab(info, text, closers)


def smol_vocab(default_model_dir: str) -> Vocab:
    return make_vocab(TokenizerInfo.from_dir(default_model_dir), TextTokenizer.from_dir(default_model_dir))


def llama2_vocab(llama2_tokenizer_dir: str) -> Vocab:
    """Llama 2's tokenizer with padded model rows (its tokenizer-only directory has no config.json)."""
    info = TokenizerInfo.from_dir(
        llama2_tokenizer_dir, vocab_size=LLAMA2_PADDED_ROWS, eos_token_ids=(LLAMA2_EOS,)
    )
    return make_vocab(info, TextTokenizer.from_dir(llama2_tokenizer_dir))


@dataclass(frozen=True)
class Walk:
    token_ids: tuple[int, ...]  # without EOS
    text: str  # decoded by the project's tokenizer
    ended: str  # "terminated", "eos" or "steps"


def random_walk(
    vocab: Vocab, compiled: CompiledGrammar, seed: int, max_steps: int = 400, finish_after: int = 60
) -> Walk:
    rng = np.random.default_rng(seed)
    m = compiled.matcher()
    row = np.empty(m.mask_words, dtype=np.int32)
    eos = set(vocab.info.eos_token_ids)
    ids: list[int] = []
    ended = "steps"
    for step in range(max_steps):
        if m.is_terminated:
            ended = "terminated"
            break
        m.fill_mask(row)
        allowed = unpack_token_bitmask(row, vocab.info.vocab_size)
        assert not allowed[vocab.info.tokenizer_vocab_size :].any(), "a padding id is allowed"
        assert all(allowed[e] == m.accepts_eos for e in eos), "EOS allowed != the grammar accepts"
        choices = np.flatnonzero(allowed)
        assert choices.size, f"empty mask after {vocab.text.decode(ids)!r}"
        if step >= finish_after:
            closing = [int(c) for c in choices if int(c) in vocab.closers]
            if closing:
                choices = np.asarray(closing)
        token = int(rng.choice(choices))
        assert m.accept(token), f"an allowed token was refused: {token}"
        if token in eos:
            ended = "eos"
            break
        ids.append(token)
    return Walk(tuple(ids), vocab.text.decode(ids), ended)


def outside_strings(text: str) -> str:
    """`text` (JSON) with the contents of its strings removed: what the whitespace rule applies to."""
    out, in_str, escaped = [], False, False
    for ch in text:
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        else:
            out.append(ch)
    return "".join(out)
