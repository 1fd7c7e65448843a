"""The stateless streaming detokenizer: concatenated deltas equal decode(all ids) for random step splits,
on a byte-level BPE (SmolLM2) and a SentencePiece byte-fallback tokenizer (Llama 2)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paddlellm.text.incremental import detokenize_step, incomplete_utf8_suffix, make_window
from paddlellm.text.tokenizer import TextTokenizer

FRAGMENTS = [
    "Hello",
    " world",
    "  two spaces",
    " ",
    "\n",
    "\n\n",
    "\t",
    "The capital of France is Paris.",
    "你好",
    "，世界",
    "北京是中国的首都。",
    "𠀀𪚥",  # CJK, incl. supplementary-plane characters (4 bytes)
    "😀",
    "🎉🎉",
    "👍🏽",
    "👨‍👩‍👧",
    "🇫🇷",
    " 😀 ",
    "é",
    "résumé",
    "naïve",
    "日本語",
    "Ωμέγα",
    "∑∫√",
    "123",
    " 3.14",
    "code: `x = 1`",
    "\u00a0",
    "ﬁ",
    "a\u0301",
]
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def smollm(default_model_dir: str) -> TextTokenizer:
    return TextTokenizer.from_dir(default_model_dir)


@pytest.fixture(scope="module")
def llama2(llama2_tokenizer_dir: str) -> TextTokenizer:
    return TextTokenizer.from_dir(llama2_tokenizer_dir)


def stream(tok: TextTokenizer, ids: list[int], steps: list[int], context: int) -> list[str]:
    """Drive detokenize_step as the engine and detokenizer would: windows from make_window per step."""
    deltas, sent = [], 0
    cuts = []
    for n in steps:
        if sent + n >= len(ids):
            break
        sent += n
        cuts.append(sent)
    cuts.append(len(ids))
    old = 0
    for i, end in enumerate(cuts):
        window, prefix_len = make_window(ids[:end], old, context)
        deltas.append(detokenize_step(tok, window, prefix_len, final=i == len(cuts) - 1))
        old = end
    return deltas


texts = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=6), min_size=1, max_size=12).map("".join)
steps = st.lists(st.integers(min_value=1, max_value=4), max_size=40)
contexts = st.sampled_from([4, 6, 8])


def check(tok: TextTokenizer, ids: list[int], split: list[int], context: int) -> None:
    expected = tok.decode(ids)
    deltas = stream(tok, ids, split, context)
    assert "".join(deltas) == expected, (ids, split, deltas)
    if "\ufffd" not in expected:  # valid text never shows a replacement char mid-stream
        assert all("\ufffd" not in d for d in deltas), deltas


@SETTINGS
@given(text=texts, split=steps, context=contexts)
def test_byte_level_bpe_stream_equals_decode(
    smollm: TextTokenizer, text: str, split: list[int], context: int
):
    check(smollm, smollm.encode(text, add_special_tokens=False), split, context)


@SETTINGS
@given(text=texts, split=steps, context=contexts)
def test_sentencepiece_stream_equals_decode(llama2: TextTokenizer, text: str, split: list[int], context: int):
    check(llama2, llama2.encode(text, add_special_tokens=False), split, context)


@SETTINGS
@given(text=texts, split=steps, special=st.integers(min_value=0, max_value=12))
def test_special_tokens_inside_the_stream_are_skipped(
    smollm: TextTokenizer, text: str, split: list[int], special: int
):
    ids = smollm.encode(text, add_special_tokens=False)
    ids.insert(special % (len(ids) + 1), 2)  # <|im_end|>, e.g. with ignore_eos
    check(smollm, ids, split, 6)


@SETTINGS
@given(ids=st.lists(st.integers(min_value=0, max_value=49151), max_size=30), split=steps)
def test_byte_level_random_ids_including_invalid_utf8(
    smollm: TextTokenizer, ids: list[int], split: list[int]
):
    """A random model emits arbitrary ids; byte-level decoding is local, so the invariant still holds."""
    assert "".join(stream(smollm, ids, split, 6)) == smollm.decode(ids)


def test_leading_space_and_one_token_steps_sentencepiece(llama2: TextTokenizer) -> None:
    for text in [" leading", "a b  c", "  😀 x", "x\n 你好 ", "𠀀 end"]:
        ids = llama2.encode(text, add_special_tokens=False)
        assert "".join(stream(llama2, ids, [1] * len(ids), 6)) == llama2.decode(ids)


def test_incomplete_character_is_held_until_it_completes(llama2: TextTokenizer) -> None:
    ids = llama2.encode("ok 😀", add_special_tokens=False)  # "▁ok", "▁", then 4 byte tokens
    assert [llama2.token_bytes(i) for i in ids[-4:]] == [b"\xf0", b"\x9f", b"\x98", b"\x80"]
    deltas = stream(llama2, ids, [1] * len(ids), 6)
    assert deltas == ["ok", " ", "", "", "", "😀"]


def test_final_step_flushes_an_unfinished_character(smollm: TextTokenizer) -> None:
    ids = smollm.encode("hi 😀", add_special_tokens=False)[:-1]  # cut inside the emoji
    window, prefix = make_window(ids, len(ids) - 1)
    held = detokenize_step(smollm, window, prefix, final=False)
    flushed = detokenize_step(smollm, window, prefix, final=True)
    assert "\ufffd" not in held and flushed.endswith("\ufffd")
    assert "".join(stream(smollm, ids, [1] * len(ids), 6)) == smollm.decode(ids)


def test_real_replacement_characters_are_not_held_forever(smollm: TextTokenizer) -> None:
    text = "a\ufffd\ufffd\ufffd\ufffd\ufffd\ufffd\ufffd\ufffd\ufffdb"
    ids = smollm.encode(text, add_special_tokens=False)
    assert "".join(stream(smollm, ids, [1] * len(ids), 4)) == text


def test_too_little_context_breaks_byte_fallback_emoji(llama2: TextTokenizer) -> None:
    """Why the context is not 2: the emoji's lead byte falls out of the window and the text is lost."""
    ids = llama2.encode("😀😀", add_special_tokens=False)
    assert "".join(stream(llama2, ids, [1] * len(ids), 2)) != llama2.decode(ids)
    assert "".join(stream(llama2, ids, [1] * len(ids), 4)) == llama2.decode(ids)


def test_make_window() -> None:
    assert make_window([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 8, 6) == ([3, 4, 5, 6, 7, 8, 9, 10], 6)
    assert make_window([1, 2, 3], 0) == ([1, 2, 3], 0)
    assert make_window([1, 2, 3], 3) == ([1, 2, 3], 3)
    with pytest.raises(ValueError, match=r"num_old=3 is outside 0\.\.2"):
        make_window([1, 2], 3)


def test_incomplete_utf8_suffix() -> None:
    emoji = "😀".encode()
    assert [incomplete_utf8_suffix(emoji[:k]) for k in range(5)] == [0, 1, 2, 3, 0]
    assert incomplete_utf8_suffix("é".encode()[:1]) == 1
    assert incomplete_utf8_suffix(b"abc") == 0
    assert incomplete_utf8_suffix(b"\x80\x80") == 0  # continuation bytes without a lead byte
    assert incomplete_utf8_suffix(b"\xff") == 0
