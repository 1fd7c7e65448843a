"""GrammarMatcher: the packed mask, accept (a refused token changes nothing), EOS and termination,
rollback, replay (preemption / resume), copy (n choices), matchers on several threads; bitmask helpers."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from paddlellm.structured.bitmask import (
    allocate_token_bitmask,
    apply_token_bitmask,
    pack_token_bitmask,
    unpack_token_bitmask,
)
from paddlellm.structured.compiler import GrammarCompiler
from paddlellm.structured.matcher import GrammarMatcher
from paddlellm.structured.spec import StructuredSpec
from tests.unit.structured_walk import Vocab, random_walk, smol_vocab

SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"enum": ["x", "y"]}},
    "required": ["a", "b"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def smol(default_model_dir: str) -> Vocab:
    return smol_vocab(default_model_dir)


@pytest.fixture(scope="module")
def smol_compiler(smol: Vocab) -> Iterator[GrammarCompiler]:
    with GrammarCompiler(smol.info, max_workers=1) as compiler:
        yield compiler


def _matcher(compiler: GrammarCompiler, spec: StructuredSpec) -> GrammarMatcher:
    return compiler.compile(spec).result(timeout=60).matcher()


def _allowed(m: GrammarMatcher) -> np.ndarray:
    row = np.empty(m.mask_words, dtype=np.int32)
    m.fill_mask(row)
    return unpack_token_bitmask(row, m.vocab_size)


def test_bitmask_pack_unpack_apply() -> None:
    rng = np.random.default_rng(0)
    allowed = rng.random((3, 70)) < 0.3
    words = pack_token_bitmask(allowed)
    assert words.shape == (3, 3) and words.dtype == np.int32
    assert (unpack_token_bitmask(words, 70) == allowed).all()
    assert unpack_token_bitmask(allocate_token_bitmask(2, 70), 70).all()
    logits = rng.standard_normal((3, 70)).astype(np.float32)
    kept = logits.copy()
    apply_token_bitmask(logits, words)
    assert (logits[allowed] == kept[allowed]).all() and np.isneginf(logits[~allowed]).all()


def test_refused_token_changes_nothing_and_eos_ends(smol: Vocab, smol_compiler: GrammarCompiler) -> None:
    m = _matcher(smol_compiler, StructuredSpec.json_schema(SCHEMA))
    before = _allowed(m)
    first = {smol.text.token_bytes(int(t)) for t in np.flatnonzero(before)}
    assert first and first <= {b"{", b'{"'}, first  # compact: no "{ " nor "{\n"
    assert not m.accept(smol.text.encode("x", add_special_tokens=False)[0])
    assert not m.accept(2) and not m.accept(10**6) and not m.accept(-1)
    assert (_allowed(m) == before).all() and m.num_accepted == 0
    ids = smol.text.encode('{"a":-12,"b":"y"}', add_special_tokens=False)
    assert m.replay(ids) == len(ids)
    assert m.accepts_eos and m.is_terminated  # the object is closed: nothing but EOS may follow
    assert list(np.flatnonzero(_allowed(m))) == [2]
    assert m.accept(2) and m.is_terminated


def test_accepting_but_not_terminated_allows_eos_and_more(
    smol: Vocab, smol_compiler: GrammarCompiler
) -> None:
    m = _matcher(smol_compiler, StructuredSpec.regex(r"[0-9]+"))
    assert not m.accepts_eos and not _allowed(m)[2]
    assert m.replay(smol.text.encode("42", add_special_tokens=False)) > 0
    allowed = _allowed(m)
    assert m.accepts_eos and not m.is_terminated and allowed[2] and allowed.sum() > 1


def test_rollback_restores_the_earlier_state(smol: Vocab, smol_compiler: GrammarCompiler) -> None:
    m = _matcher(smol_compiler, StructuredSpec.json_schema(SCHEMA))
    ids = smol.text.encode('{"a":7,"b":"x"}', add_special_tokens=False)
    states = []
    for t in ids:
        states.append(_allowed(m))
        assert m.accept(t)
    for k in range(1, len(ids) + 1):  # speculative decoding undoes the rejected drafts, any number of them
        twin = m.copy()
        twin.rollback(k)
        assert (_allowed(twin) == states[len(ids) - k]).all()
        assert twin.num_accepted == len(ids) - k
    with pytest.raises(ValueError):
        m.rollback(len(ids) + 1)
    m.rollback(len(ids))
    assert m.replay(ids) == len(ids) and m.is_terminated


def test_replay_after_preemption_equals_the_live_state(smol: Vocab, smol_compiler: GrammarCompiler) -> None:
    compiled = smol_compiler.compile(StructuredSpec.json_schema(SCHEMA)).result()
    for seed in range(4):
        walk = random_walk(smol, compiled, seed)
        half = list(walk.token_ids[: len(walk.token_ids) // 2])
        live = compiled.matcher()
        for t in half:
            assert live.accept(t)
        resumed = compiled.matcher()  # a new instance given resume_ids
        assert resumed.replay(half) == len(half)
        assert (_allowed(resumed) == _allowed(live)).all()
        live.reset()
        assert live.num_accepted == 0 and live.replay(walk.token_ids) == len(walk.token_ids)


def test_replay_stops_at_the_first_foreign_token(smol: Vocab, smol_compiler: GrammarCompiler) -> None:
    m = _matcher(smol_compiler, StructuredSpec.json_schema(SCHEMA))
    good = smol.text.encode('{"a":1', add_special_tokens=False)
    bad = smol.text.encode("zzz", add_special_tokens=False)
    assert m.replay(good + bad + good) == len(good)
    assert m.num_accepted == len(good) and m.replay([10**7]) == 0


def test_copies_are_independent(smol: Vocab, smol_compiler: GrammarCompiler) -> None:
    m = _matcher(smol_compiler, StructuredSpec.choice(["alpha", "beta"]))
    a, b = m.copy(), m.copy()
    assert a.replay(smol.text.encode("alpha", add_special_tokens=False)) > 0 and a.is_terminated
    assert not b.is_terminated and b.num_accepted == 0 and m.num_accepted == 0
    assert b.replay(smol.text.encode("beta", add_special_tokens=False)) > 0 and b.is_terminated


def test_fill_mask_checks_the_row(smol_compiler: GrammarCompiler) -> None:
    m = _matcher(smol_compiler, StructuredSpec.json_object())
    for bad in (
        np.empty(m.mask_words, np.int64),
        np.empty(m.mask_words + 1, np.int32),
        np.empty((2, m.mask_words), np.int32)[:, 0],
    ):
        with pytest.raises(ValueError, match="mask row"):
            m.fill_mask(bad)


def test_matchers_of_one_grammar_run_on_several_threads(smol: Vocab, smol_compiler: GrammarCompiler) -> None:
    compiled = smol_compiler.compile(StructuredSpec.json_schema(SCHEMA)).result()
    expected = {seed: random_walk(smol, compiled, seed).text for seed in range(8)}
    got: dict[int, str] = {}

    def run(seed: int) -> None:
        got[seed] = random_walk(smol, compiled, seed).text

    threads = [threading.Thread(target=run, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert got == expected
    assert all(json.loads(t)["b"] in ("x", "y") for t in got.values())


def test_an_allow_everything_grammar_leaves_text_tokens_alone(
    smol: Vocab, smol_compiler: GrammarCompiler
) -> None:
    """Acceptance 4's premise: a regex accepting any text masks only what no text can be: special tokens other
    than EOS, and at the start, byte tokens that cannot begin a UTF-8 character. So greedy decoding with it
    picks what it picks without it."""
    m = _matcher(smol_compiler, StructuredSpec.regex(r"[\s\S]*"))
    masked = np.flatnonzero(~_allowed(m)).tolist()
    for t in set(masked) - set(smol.text.special_ids):
        assert 0x80 <= smol.text.token_bytes(t)[0] < 0xC2 or smol.text.token_bytes(t)[0] > 0xF4, t
    assert 2 not in masked
    text = 'Hello, world! 中文 😀\n```json\n{"a": 1}\n```'
    ids = smol.text.encode(text, add_special_tokens=False)
    assert m.replay(ids) == len(ids) and m.accepts_eos
