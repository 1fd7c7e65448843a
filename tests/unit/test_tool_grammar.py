"""Tool-call grammars (gateway/tool_calls/grammar.py) compiled by the engine's compiler over the default
model's vocabulary: seeded random walks through every forced grammar parse, with the format's own parser,
into calls of the offered tools whose arguments validate against their `parameters` (jsonschema is the
oracle); the lazy `auto` grammar leaves text free and constrains only what follows `<tool_call>`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from gateway.tool_calls import make_parser
from gateway.tool_calls.grammar import content_grammar, tool_grammar
from paddlellm.errors import InvalidRequest
from paddlellm.structured.compiler import GrammarCompiler
from paddlellm.structured.spec import StructuredSpec
from tests.unit.structured_walk import Vocab, random_walk, smol_vocab

TOOLS: dict[str, dict[str, Any] | None] = {
    "get_weather": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 12},
            "unit": {"enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
    "no_args": None,
    "search": {
        "type": "object",
        "properties": {"q": {"type": "string", "maxLength": 8, "description": "syntax: a ::= b"}},
        "required": ["q"],
        "additionalProperties": False,
    },
}
SEEDS = range(12)


@pytest.fixture(scope="module")
def smol(default_model_dir: str) -> Vocab:
    return smol_vocab(default_model_dir)


@pytest.fixture(scope="module")
def compiler(smol: Vocab) -> Iterator[GrammarCompiler]:
    with GrammarCompiler(smol.info, max_workers=1) as c:
        yield c


def _compile(compiler: GrammarCompiler, grammar: str) -> Any:
    return compiler.compile(StructuredSpec.create("grammar", grammar, param="tools")).result(timeout=60)


def _calls(fmt: str, text: str) -> tuple[str, list[tuple[str, Any]]]:
    parser = make_parser(fmt, frozenset(TOOLS))
    parts = [parser.feed(text), parser.finish()]
    return "".join(p.content for p in parts), [
        (c.name, json.loads(c.arguments)) for p in parts for c in p.calls
    ]


@pytest.mark.parametrize("fmt", ["hermes", "llama3_json", "generic"])
@pytest.mark.parametrize("parallel", [True, False])
def test_forced_walks_are_valid_calls(
    smol: Vocab, compiler: GrammarCompiler, fmt: str, parallel: bool
) -> None:
    grammar = tool_grammar(fmt, list(TOOLS.items()), forced=True, parallel=parallel)
    assert grammar is not None
    compiled = _compile(compiler, grammar)
    walks = [random_walk(smol, compiled, seed, finish_after=40) for seed in SEEDS]
    done = [w for w in walks if w.ended != "steps"]
    assert len(done) >= len(walks) // 2, [w.text for w in walks]
    several = 0
    for w in done:
        content, calls = _calls(fmt, w.text)
        assert calls and content.strip() == "", w.text
        assert parallel or len(calls) == 1, w.text
        several += len(calls) > 1
        for name, args in calls:
            jsonschema.validate(args, TOOLS[name] or {"type": "object", "maxProperties": 0})
    assert parallel or several == 0


def test_named_grammar_calls_only_that_function(smol: Vocab, compiler: GrammarCompiler) -> None:
    for fmt in ("hermes", "llama3_json", "generic"):
        grammar = tool_grammar(fmt, [("search", TOOLS["search"])], forced=True, parallel=False)
        compiled = _compile(compiler, grammar)  # type: ignore[arg-type]
        for w in [random_walk(smol, compiled, s, finish_after=30) for s in range(6)]:
            if w.ended != "steps":
                assert [n for n, _ in _calls(fmt, w.text)[1]] == ["search"], w.text


def test_generic_auto_is_calls_or_content(smol: Vocab, compiler: GrammarCompiler) -> None:
    grammar = tool_grammar("generic", list(TOOLS.items()), forced=False, parallel=True)
    compiled = _compile(compiler, grammar)  # type: ignore[arg-type]
    for w in [random_walk(smol, compiled, s, finish_after=30) for s in SEEDS]:
        if w.ended == "steps":
            continue
        value = json.loads(w.text)
        content, calls = _calls("generic", w.text)
        if "content" in value:
            assert content == value["content"] and not calls
        else:
            assert calls and not content


def test_hermes_auto_is_lazy(smol: Vocab, compiler: GrammarCompiler) -> None:
    """Free text is free; after `<tool_call>` only a valid call may follow."""
    grammar = tool_grammar("hermes", list(TOOLS.items()), forced=False, parallel=True)
    assert grammar is not None and "[lazy]" in grammar
    compiled = _compile(compiler, grammar)
    good = 'Sure! <tool_call>\n{"name": "search", "arguments": {"q": "paris"}}\n</tool_call>'
    for text, accepted in (
        ("Any text at all, {json} or </tool_call>.", True),
        (good, True),
        ('Sure! <tool_call>\n{"name": "nope"', False),
        ('Sure! <tool_call>\n{"name": "search", "arguments": {"q": 3}}', False),
    ):
        m = compiled.matcher()
        ok = all(m.accept(t) for t in smol.text.encode(text, add_special_tokens=False))
        assert ok == accepted, text
    assert _calls("hermes", good) == ("Sure! ", [("search", {"q": "paris"})])


def test_unsupported_parameters_schema_is_a_400_naming_tools(compiler: GrammarCompiler) -> None:
    bad = {"type": "object", "properties": {"a": {"not": {"type": "string"}}}}
    grammar = tool_grammar("generic", [("f", bad)], forced=True, parallel=True)
    with pytest.raises(InvalidRequest) as e:
        _compile(compiler, grammar)  # type: ignore[arg-type]
    assert e.value.param == "tools" and "not" in e.value.message


def test_generic_none_is_content_only(smol: Vocab, compiler: GrammarCompiler) -> None:
    compiled = _compile(compiler, content_grammar())
    walks = [random_walk(smol, compiled, s, finish_after=20) for s in range(8)]
    for w in [w for w in walks if w.ended != "steps"]:
        content, calls = _calls("generic", w.text)
        assert not calls and content == json.loads(w.text)["content"], w.text
