"""Random walks through compiled grammars, on SmolLM2's byte-level BPE and Llama 2's SentencePiece tokenizer:
whatever allowed tokens are drawn, the decoded text parses and validates (`jsonschema` is the oracle),
full-matches the regex, or is one of the choices; JSON is compact unless whitespace is asked for."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from paddlellm.structured.compiler import GrammarCompiler
from paddlellm.structured.spec import StructuredSpec
from tests.unit.structured_walk import Vocab, llama2_vocab, outside_strings, random_walk, smol_vocab

SEEDS = range(6)

SCHEMAS = {
    "nested_objects": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "address": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 10},
                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                    "geo": {
                        "type": "object",
                        "properties": {"lat": {"type": "number"}},
                        "required": ["lat"],
                        "additionalProperties": False,
                    },
                },
                "required": ["city", "zip", "geo"],
                "additionalProperties": False,
            },
            "nickname": {"type": "string", "maxLength": 6},  # optional
        },
        "required": ["name", "address"],
        "additionalProperties": False,
    },
    "arrays_min_max_items": {
        "type": "object",
        "properties": {
            "scores": {
                "type": "array",
                "items": {"type": "integer", "minimum": -5, "maximum": 300},
                "minItems": 2,
                "maxItems": 4,
            },
            "pairs": {
                "type": "array",
                "items": {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 2},
                "maxItems": 3,
            },
        },
        "required": ["scores", "pairs"],
        "additionalProperties": False,
    },
    "enums_and_const": {
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green", "blue", 'light "sky" blue']},
            "size": {"enum": [1, 2.5, None, True]},
            "version": {"const": "v1"},
        },
        "required": ["color", "size", "version"],
        "additionalProperties": False,
    },
    "number_ranges": {
        "type": "object",
        "properties": {
            "age": {"type": "integer", "minimum": 18, "maximum": 99},
            "ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "count": {"type": "integer", "exclusiveMaximum": 10, "minimum": 0},
        },
        "required": ["age", "ratio", "count"],
        "additionalProperties": False,
    },
    "string_patterns": {
        "type": "object",
        "properties": {
            "sku": {"type": "string", "pattern": "^[A-Z]{2,3}-[0-9]{3}$"},
            "code": {"type": "string", "minLength": 2, "maxLength": 4},
            "day": {"type": "string", "format": "date"},
        },
        "required": ["sku", "code", "day"],
        "additionalProperties": False,
    },
    "anyof_null": {
        "type": "object",
        "properties": {
            "note": {"anyOf": [{"type": "string", "maxLength": 8}, {"type": "null"}]},
            "n": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "null"}]},
        },
        "required": ["note", "n"],
        "additionalProperties": False,
    },
    "allof_honoured": {
        "allOf": [
            {
                "type": "object",
                "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 50}},
                "required": ["a"],
            },
            {"properties": {"a": {"maximum": 9}, "b": {"type": "boolean"}}, "required": ["b"]},
        ],
    },
    "pydantic_refs": {  # what openai's parse(response_format=Model) sends: $defs, $ref, titles, strict shape
        "$defs": {
            "Item": {
                "properties": {
                    "name": {"title": "Name", "type": "string", "maxLength": 8},
                    "qty": {"title": "Qty", "type": "integer", "minimum": 1, "maximum": 9},
                },
                "required": ["name", "qty"],
                "title": "Item",
                "type": "object",
                "additionalProperties": False,
            }
        },
        "properties": {
            "items": {"items": {"$ref": "#/$defs/Item"}, "title": "Items", "type": "array", "maxItems": 3}
        },
        "required": ["items"],
        "title": "Order",
        "type": "object",
        "additionalProperties": False,
    },
    "top_level_array": {"type": "array", "items": {"enum": ["x", "y"]}, "minItems": 1, "maxItems": 5},
}


@pytest.fixture(scope="module")
def smol(default_model_dir: str) -> Vocab:
    return smol_vocab(default_model_dir)


@pytest.fixture(scope="module")
def llama2(llama2_tokenizer_dir: str) -> Vocab:
    return llama2_vocab(llama2_tokenizer_dir)


@pytest.fixture(scope="module", params=["smollm", "llama2"])
def vocab(request: pytest.FixtureRequest) -> Vocab:
    return request.getfixturevalue("smol" if request.param == "smollm" else "llama2")


def _finished(walks: list) -> list:  # noqa: ANN001
    done = [w for w in walks if w.ended != "steps"]
    assert len(done) >= len(walks) // 2, [w.text for w in walks]
    return done


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schema_walks_validate(vocab: Vocab, name: str) -> None:
    schema = SCHEMAS[name]
    with GrammarCompiler(vocab.info, max_workers=1) as compiler:
        compiled = compiler.compile(StructuredSpec.json_schema(schema)).result(timeout=60)
        for walk in _finished([random_walk(vocab, compiled, seed) for seed in SEEDS]):
            value = json.loads(walk.text)
            jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())
            assert not any(c.isspace() for c in outside_strings(walk.text)), walk.text  # compact by default


def test_allof_is_honoured_not_ignored(smol: Vocab) -> None:
    """The second allOf branch caps a at 9 and requires b: a grammar that ignored it would produce a > 9 or
    omit b somewhere in these walks."""
    schema = SCHEMAS["allof_honoured"]
    with GrammarCompiler(smol.info, max_workers=1) as compiler:
        compiled = compiler.compile(StructuredSpec.json_schema(schema)).result(timeout=60)
        values = [json.loads(w.text) for w in _finished([random_walk(smol, compiled, s) for s in range(20)])]
    assert all(0 <= v["a"] <= 9 and isinstance(v["b"], bool) for v in values), values


def test_json_object_walks_parse_to_objects(vocab: Vocab) -> None:
    with GrammarCompiler(vocab.info, max_workers=1) as compiler:
        compiled = compiler.compile(StructuredSpec.json_object()).result(timeout=60)
        for walk in _finished([random_walk(vocab, compiled, seed, finish_after=20) for seed in SEEDS]):
            assert isinstance(json.loads(walk.text), dict), walk.text
            assert not any(c.isspace() for c in outside_strings(walk.text)), walk.text


def test_flexible_whitespace_is_allowed_only_when_asked(smol: Vocab) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    with GrammarCompiler(smol.info, max_workers=1) as compiler:
        compact = compiler.compile(StructuredSpec.json_schema(schema)).result().matcher()
        flexible = (
            compiler.compile(StructuredSpec.json_schema(schema, whitespace_flexible=True)).result().matcher()
        )
    spaced = smol.text.encode('{ "a" : 1 }', add_special_tokens=False)
    assert flexible.replay(spaced) == len(spaced) and flexible.accepts_eos
    accepted = compact.replay(spaced)  # stops at the first token carrying whitespace
    assert accepted < len(spaced)
    assert not any(c.isspace() for c in smol.text.decode(spaced[:accepted]))
    assert any(c.isspace() for c in smol.text.decode(spaced[accepted : accepted + 1]))


REGEXES = [
    r"[a-z]{3,8}@[a-z]{2,6}\.(com|org)",
    r"(\+|-)?[0-9]{1,4}(\.[0-9]{1,2})?",
    r"(yes|no|maybe)( because [a-z ]{1,20})?",
    r"[A-Z][a-z]{0,12} [0-9]{4}-[0-9]{2}-[0-9]{2}",
    r"\w+",  # unbounded: the walk ends on EOS once the mask allows it
]


@pytest.mark.parametrize("pattern", REGEXES)
def test_regex_walks_full_match(vocab: Vocab, pattern: str) -> None:
    with GrammarCompiler(vocab.info, max_workers=1) as compiler:
        compiled = compiler.compile(StructuredSpec.regex(pattern)).result(timeout=60)
        for walk in _finished([random_walk(vocab, compiled, seed, finish_after=10) for seed in SEEDS]):
            assert re.fullmatch(pattern, walk.text), walk.text


def test_choice_walks_give_one_of_the_choices(vocab: Vocab) -> None:
    choices = ["positive", "negative", "neutral", 'not "sure"', "中文 ok"]
    with GrammarCompiler(vocab.info, max_workers=1) as compiler:
        compiled = compiler.compile(StructuredSpec.choice(choices)).result(timeout=60)
        texts = {random_walk(vocab, compiled, seed).text for seed in range(16)}
    assert texts <= set(choices) and len(texts) >= 2, texts


@pytest.mark.parametrize(
    ("grammar", "check"),
    [
        ('root ::= "(" [0-9]+ ")" | "none"', r"\([0-9]+\)|none"),  # GBNF
        ('start: item ("," item)*\nitem: /[a-c]{1,3}/', r"[a-c]{1,3}(,[a-c]{1,3})*"),  # Lark
    ],
)
def test_grammar_walks_match(smol: Vocab, grammar: str, check: str) -> None:
    with GrammarCompiler(smol.info, max_workers=1) as compiler:
        compiled = compiler.compile(StructuredSpec.grammar(grammar)).result(timeout=60)
        for walk in _finished([random_walk(smol, compiled, seed, finish_after=10) for seed in SEEDS]):
            assert re.fullmatch(check, walk.text), walk.text
