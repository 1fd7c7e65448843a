"""The streaming tool-call parsers (gateway/tool_calls) against canned model outputs, split every way."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping

import pytest

from gateway.tool_calls import PARSERS, ParsedDelta, ToolCall, make_parser
from gateway.tool_calls.json_scan import decode_string_part

TOOLS = frozenset({"get_weather", "f"})


def call(name: str, args: Mapping[str, object]) -> ToolCall:
    return ToolCall(name, json.dumps(args, ensure_ascii=False))


def run(parser: str, pieces: list[str], tools: frozenset[str] = TOOLS) -> tuple[str, list[ToolCall]]:
    p = make_parser(parser, tools)
    deltas = [p.feed(piece) for piece in pieces] + [p.finish()]
    calls = [c for d in deltas for c in d.calls]
    assert p.calls_emitted == len(calls)
    return "".join(d.content for d in deltas), calls


def splits(text: str, seed: int = 0) -> Iterator[list[str]]:
    """The whole text; every 2-piece split; one character at a time; seeded random multi-piece splits."""
    yield [text]
    for i in range(1, len(text)):
        yield [text[:i], text[i:]]
    yield list(text)
    rng = random.Random(seed)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(2, 8))))
        yield [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def check(parser: str, text: str, content: str, calls: list[ToolCall], tools: frozenset[str] = TOOLS) -> None:
    for pieces in splits(text):
        assert run(parser, pieces, tools) == (content, calls), pieces


GW_PARIS = call("get_weather", {"city": "Paris"})
F_EMPTY = call("f", {})
UNICODE_ARGS = {"text": '你好 😀 café "q"\nline2 😀'}
# The same arguments as a model may spell them: escapes, a surrogate pair, raw UTF-8.
UNICODE_JSON = r'{"text": "你好 😀 caf\u00e9 \"q\"\nline2 \ud83d\ude00"}'

H_GW = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
H_F = '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
H_BAD = '<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>'

HERMES_CASES = [
    ("single call", H_GW, "", [GW_PARIS]),
    ("several calls", f"{H_GW}\n{H_F}\n", "", [GW_PARIS, F_EMPTY]),
    ("leading whitespace", f"\n\n{H_GW}", "", [GW_PARIS]),
    ("text before", f"Let me check.\n{H_GW}\n{H_F}", "Let me check.\n", [GW_PARIS, F_EMPTY]),
    ("text after", f"{H_GW}\nDone.", "\nDone.", [GW_PARIS]),
    (
        "plain text",
        "1 < 2, <b>bold</b> and <tool_calls> are text",
        "1 < 2, <b>bold</b> and <tool_calls> are text",
        [],
    ),
    ("whitespace only", " \n ", " \n ", []),
    ("malformed", f"Hi {H_BAD}", f"Hi {H_BAD}", []),
    ("malformed between calls", f"{H_GW}\n{H_BAD}\n{H_F}", f"\n{H_BAD}\n", [GW_PARIS, F_EMPTY]),
    ("unknown function", '<tool_call>\n{"name": "rm", "arguments": {}}\n</tool_call>', None, []),
    ("arguments not an object", '<tool_call>{"name": "f", "arguments": "x"}</tool_call>', None, []),
    ("not an object", "<tool_call>[1, 2]</tool_call>", None, []),
    (
        "parameters key",
        '<tool_call>{"name": "f", "parameters": {"a": [1]}}</tool_call>',
        "",
        [call("f", {"a": [1]})],
    ),
    ("unclosed valid", '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n', "", [call("f", {"a": 1})]),
    ("cut in closing tag", '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_', "", [F_EMPTY]),
    ("unclosed cut", 'Sure.\n<tool_call>\n{"name": "f", "argu', None, []),
    (
        "unicode",
        f'<tool_call>\n{{"name": "f", "arguments": {UNICODE_JSON}}}\n</tool_call>',
        "",
        [call("f", UNICODE_ARGS)],
    ),
    (
        "braces in strings",
        '<tool_call>{"name": "f", "arguments": {"s": "}{"}}</tool_call>',
        "",
        [call("f", {"s": "}{"})],
    ),
]

L_GW = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
L_F = '{"name": "f", "parameters": {}}'
L_CUT = '{"name": "f", "param'

LLAMA_CASES = [
    ("single call", L_GW, "", [GW_PARIS]),
    ("python tag", f"<|python_tag|>{L_GW}", "", [GW_PARIS]),
    ("several calls", f"{L_GW}; {L_F}", "", [GW_PARIS, F_EMPTY]),
    (
        "several, newline and trailing separators",
        f"\n<|python_tag|> {L_GW};\n{L_F};\n",
        "",
        [GW_PARIS, F_EMPTY],
    ),
    ("arguments key", '{"name": "f", "arguments": {"a": 1}}', "", [call("f", {"a": 1})]),
    ("text before the tag", f"Let me look. <|python_tag|>{L_GW}", "Let me look. ", [GW_PARIS]),
    ("plain text", 'Sunny in Paris {"name": "f", "parameters": {}}.', None, []),
    ("plain text starting with <", "<b>Hi</b> <|python_", None, []),
    ("whitespace only", "\n ", None, []),
    ("tag alone", "<|python_tag|> ", None, []),
    ("first unknown", '{"name": "rm", "parameters": {}}; ' + L_F, None, []),
    ("first malformed", '{"name": "f", "parameters": {"a": }}', None, []),
    ("first not a call object", '{"a": 1} is JSON', None, []),
    ("first cut", '  {"name": "get_wea', None, []),
    (
        "later unknown",
        f'{L_GW}; {{"name": "rm", "parameters": {{}}}}',
        '; {"name": "rm", "parameters": {}}',
        [GW_PARIS],
    ),
    ("text after", f"{L_GW} Hope this helps.", " Hope this helps.", [GW_PARIS]),
    ("later cut", f"{L_GW}; {L_CUT}", f"; {L_CUT}", [GW_PARIS]),
    ("unicode", f'{{"name": "f", "parameters": {UNICODE_JSON}}}', "", [call("f", UNICODE_ARGS)]),
    ("braces in strings", '{"name": "f", "parameters": {"s": "a\\"}{"}}', "", [call("f", {"s": 'a"}{'})]),
]

G_GW = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
G_F = '{"name": "f", "arguments": {}}'

GENERIC_CASES = [
    ("single call", f'{{"tool_calls": [{G_GW}]}}', "", [GW_PARIS]),
    ("several calls", f'{{"tool_calls": [{G_GW}, {G_F}]}}', "", [GW_PARIS, F_EMPTY]),
    ("compact", '{"tool_calls":[{"name":"f","arguments":{"a":1}}]}', "", [call("f", {"a": 1})]),
    ("lenient whitespace", f'\n{{ "tool_calls" :\n[ {G_F} ,\n{G_F} ] }}\n', "", [F_EMPTY, F_EMPTY]),
    (
        "unicode arguments",
        f'{{"tool_calls": [{{"name": "f", "arguments": {UNICODE_JSON}}}]}}',
        "",
        [call("f", UNICODE_ARGS)],
    ),
    ("content", '{"content": "Bonjour!"}', "Bonjour!", []),
    ("unicode content", '{"content": ' + UNICODE_JSON.removeprefix('{"text": '), UNICODE_ARGS["text"], []),
    ("escapes", r'{"content": "a\\b\/c\td\u0041\b"}', "a\\b/c\tdA\b", []),
    ("plain text", "Paris is the capital. {}", None, []),
    ("plain text after whitespace", "  \nHi", None, []),
    ("other key", '{"answer": "x"}', None, []),
    ("content not a string", '{"content": null}', None, []),
    ("first unknown", f'{{"tool_calls": [{{"name": "rm", "arguments": {{}}}}, {G_F}]}}', None, []),
    ("first malformed", '{"tool_calls": [{"name": "f", "arguments": {"a": }}]}', None, []),
    ("later malformed", f'{{"tool_calls": [{G_GW}, {{"name": "f"}}]}}', ', {"name": "f"}]}', [GW_PARIS]),
    ("cut in array", f'{{"tool_calls": [{G_GW}, {{"name": "f", "argu', ', {"name": "f", "argu', [GW_PARIS]),
    ("cut in first element", '{"tool_calls": [{"name": "f", "argu', None, []),
    ("cut before the final brace", f'{{"tool_calls": [{G_F}] ', "", [F_EMPTY]),
    ("cut in content", '{"content": "Hello wor', "Hello wor", []),
    ("cut in an escape", r'{"content": "caf\u00', r"caf\u00", []),
    ("cut after a high surrogate", r'{"content": "x\ud83d', r"x\ud83d", []),
    ("lone surrogates", r'{"content": "a\ud83db\ude00c\ud83d\u0041"}', "a\ufffdb\ufffdc\ufffdA", []),
    ("invalid escapes kept", r'{"content": "a\qb\u12x"}', r"a\qb\u12x", []),
    ("text after the object", '{"content": "hi"} extra', "hi extra", []),
    ("empty array", '{"tool_calls": []}', "", []),
]


def _cases(parser: str, cases: list[tuple[str, str, str | None, list[ToolCall]]]) -> list[object]:
    return [
        pytest.param(parser, text, text if c is None else c, calls, id=f"{parser}-{n}")
        for n, text, c, calls in cases
    ]


@pytest.mark.parametrize(
    "parser,text,content,calls",
    _cases("hermes", HERMES_CASES) + _cases("llama3_json", LLAMA_CASES) + _cases("generic", GENERIC_CASES),
)
def test_canned_output_any_split(parser: str, text: str, content: str, calls: list[ToolCall]) -> None:
    """Expected content (None in the tables: the text verbatim) and calls, for every way of splitting."""
    check(parser, text, content, calls)


def test_unknown_parser_and_factory() -> None:
    with pytest.raises(ValueError, match="nope"):
        make_parser("nope", TOOLS)
    for name in PARSERS:
        p = make_parser(name, TOOLS)
        assert p.feed("") == ParsedDelta() and p.calls_emitted == 0
        assert isinstance(p.finish(), ParsedDelta)


def test_no_tools_means_no_calls() -> None:
    """A call naming a function not in tool_names is text: with no tools, the output is all content."""
    for parser, text in (("hermes", H_GW), ("llama3_json", L_GW), ("generic", f'{{"tool_calls": [{G_GW}]}}')):
        check(parser, text, text, [], tools=frozenset())


def feeds(parser: str, pieces: list[str]) -> list[ParsedDelta]:
    p = make_parser(parser, TOOLS)
    return [p.feed(piece) for piece in pieces] + [p.finish()]


def test_hermes_releases_content_early() -> None:
    p = make_parser("hermes", TOOLS)
    assert p.feed("Hello").content == "Hello"
    assert p.feed(" <tool").content == " "  # only the possible marker is held
    assert p.feed("box> ok").content == "<toolbox> ok"
    assert make_parser("hermes", TOOLS).feed("Hello <tool").content == "Hello "
    d = p.feed(' <tool_call>\n{"name": "f", "arguments": {}}')
    assert d == ParsedDelta(" ") and p.calls_emitted == 0  # a call is emitted whole, when its tag closes
    assert p.feed("\n</tool_call>") == ParsedDelta("", (F_EMPTY,)) and p.calls_emitted == 1
    assert p.feed("\n") == ParsedDelta()  # whitespace after a call is held: it may sit between two calls
    assert p.feed("Done") == ParsedDelta("\nDone")
    assert p.finish() == ParsedDelta()


def test_hermes_one_delta_content_then_calls() -> None:
    assert feeds("hermes", [f"Checking.{H_GW}{H_F}"])[0] == ParsedDelta("Checking.", (GW_PARIS, F_EMPTY))


def test_hermes_calls_emitted_counts() -> None:
    p = make_parser("hermes", TOOLS)
    counts = [(p.feed(piece), p.calls_emitted)[1] for piece in (H_GW, "\n", H_BAD, H_F, H_F[:20])]
    assert counts == [1, 1, 1, 2, 2]
    assert p.finish() == ParsedDelta(H_F[:20]) and p.calls_emitted == 2


def test_llama3_releases_content_early() -> None:
    p = make_parser("llama3_json", TOOLS)
    assert p.feed(" ") == ParsedDelta()  # may still open a call
    assert p.feed("Sure") == ParsedDelta(" Sure")
    assert p.feed(" <|py") == ParsedDelta(" ")
    assert p.feed("thon_tag|>") == ParsedDelta()
    assert p.feed(L_GW[:-1]) == ParsedDelta()
    assert p.feed("}") == ParsedDelta("", (GW_PARIS,)) and p.calls_emitted == 1  # emitted as each completes
    assert p.feed("; ") == ParsedDelta()
    assert p.feed("Bye") == ParsedDelta("; Bye")  # cannot start a call: released at once
    assert p.finish() == ParsedDelta()
    q = make_parser("llama3_json", TOOLS)
    assert q.feed("<b") == ParsedDelta("<b")


def test_generic_streams_content_and_calls() -> None:
    p = make_parser("generic", TOOLS)
    assert p.feed('{"content": "Hel') == ParsedDelta("Hel")
    assert p.feed("lo \\u00") == ParsedDelta("lo ")  # the incomplete escape is held
    assert p.feed("e9 \\ud83d") == ParsedDelta("é ")  # a high surrogate waits for its pair
    assert p.feed('\\ude00"') == ParsedDelta("😀")
    assert p.feed("}\n") == ParsedDelta()
    assert p.finish() == ParsedDelta()
    q = make_parser("generic", TOOLS)
    assert q.feed("Hello") == ParsedDelta("Hello")
    r = make_parser("generic", TOOLS)
    assert r.feed(f'{{"tool_calls": [{G_GW}') == ParsedDelta("", (GW_PARIS,)) and r.calls_emitted == 1
    assert r.feed(f", {G_F[:-1]}") == ParsedDelta()
    assert r.feed("}]}") == ParsedDelta("", (F_EMPTY,)) and r.calls_emitted == 2


def test_decode_string_part_waits_only_for_incomplete_escapes() -> None:
    assert decode_string_part('ab"c', 0) == ("ab", 3, True)
    assert decode_string_part("ab\\", 0) == ("ab", 2, False)
    assert decode_string_part("\\ud83d\\u", 0) == ("", 0, False)
    assert decode_string_part("\\ud83dx", 0) == ("\ufffdx", 7, False)


FRAGMENTS = [
    "Hi", " ", "\n", "<", "<tool_call>", "</tool_call>", "<|python_tag|>", "{", "}", ";", ", ", '"', "\\",
    H_GW, H_F, H_BAD, L_GW, L_F, L_CUT, G_GW, G_F, '{"tool_calls": [', '{"content": "', "]}", '"}', "\\u00e9",
    "\\ud83d", "\\ude00", "你好", "😀",
]  # fmt: skip


@pytest.mark.parametrize("parser", PARSERS)
def test_random_texts_split_invariant(parser: str) -> None:
    """Whatever the text, any split gives the result of feeding it whole."""
    rng = random.Random(27)
    for i in range(40):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 8)))
        whole = run(parser, [text])
        if parser != "generic" and not whole[1]:
            assert whole[0] == text  # no calls: nothing was dropped
        for pieces in splits(text, seed=i):
            assert run(parser, pieces) == whole, (text, pieces)
