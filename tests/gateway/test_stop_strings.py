"""Stop-string matching over streamed deltas: independent of how the text is split."""

from __future__ import annotations

from collections.abc import Iterable

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.stop_strings import StopStringMatcher


def truncate_at_stop(text: str, stops: Iterable[str]) -> tuple[str, str | None]:
    """Non-streaming: the text before the earliest stop string, and which one matched (None if none)."""
    matcher = StopStringMatcher(stops)
    head, _ = matcher.feed(text)
    tail, _ = matcher.flush()
    return head + tail, matcher.matched


def run(stops: list[str], deltas: list[str]) -> tuple[str, bool, list[str]]:
    m = StopStringMatcher(stops)
    pieces, stopped = [], False
    for d in deltas:
        out, stopped = m.feed(d)
        pieces.append(out)
    if not stopped:
        out, stopped = m.flush()
        pieces.append(out)
    return "".join(pieces), stopped, pieces


def reference(text: str, stops: list[str]) -> tuple[str, bool]:
    hits = [text.find(s) for s in stops if s and s in text]
    return (text[: min(hits)], True) if hits else (text, False)


def test_stop_split_across_deltas_is_held_then_cut() -> None:
    text, stopped, pieces = run(["</answer>"], ["The answer is 42</an", "swer> and more"])
    assert (text, stopped) == ("The answer is 42", True)
    assert pieces == ["The answer is 42", ""]


def test_false_alarm_prefix_is_released() -> None:
    m = StopStringMatcher(["STOP"])
    assert m.feed("go ST") == ("go ", False)
    assert m.feed("ILL") == ("STILL", False)
    assert m.flush() == ("", False)


def test_held_prefix_is_flushed_at_the_end() -> None:
    m = StopStringMatcher(["\n\nUser:"])
    assert m.feed("bye\n\nUs") == ("bye", False)
    assert m.flush() == ("\n\nUs", False)


def test_earliest_stop_wins_even_if_a_shorter_one_completes_first() -> None:
    # "abcd" starts before "c": waiting for "d" is what makes the result split-independent.
    m = StopStringMatcher(["abcd", "c"])
    assert m.feed("xabc") == ("x", False)
    assert m.feed("d") == ("", True)
    assert m.matched == "abcd"
    assert truncate_at_stop("xabcd", ["abcd", "c"]) == ("x", "abcd")
    assert truncate_at_stop("xabce", ["abcd", "c"]) == ("xab", "c")


def test_nothing_after_stop_and_empty_stops_ignored() -> None:
    m = StopStringMatcher(["", "END"])
    assert m.feed("fooEND bar") == ("foo", True)
    assert m.feed("more") == ("", True)
    assert m.flush() == ("", True)
    assert StopStringMatcher([""]).feed("abc") == ("abc", False)
    assert truncate_at_stop("abc", []) == ("abc", None)


def test_unicode_stop_strings() -> None:
    assert run(["。"], ["你好", "世界。", "再见"])[:2] == ("你好世界", True)
    assert run(["😀!"], ["a😀", "b😀", "!c"])[:2] == ("a😀b", True)


@settings(max_examples=400, deadline=None)
@given(
    text=st.text(alphabet="ab c\n", max_size=40),
    stops=st.lists(st.text(alphabet="ab c\n", min_size=1, max_size=4), max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=10),
)
def test_streaming_equals_whole_text_for_any_split(text: str, stops: list[str], cuts: list[int]) -> None:
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    deltas = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    emitted, stopped, _ = run(stops, deltas)
    assert (emitted, stopped) == reference(text, stops)
    assert truncate_at_stop(text, stops)[0] == reference(text, stops)[0]
