"""StructuredSpec: strict validation naming the field, normal form, canonical key, wire round trip, limits.
Pure: no tokenizer, no grammar library."""

from __future__ import annotations

import json
import time

import pytest

from paddlellm.errors import InvalidRequest
from paddlellm.structured.spec import SpecLimits, StructuredSpec

SCHEMA = {
    "type": "object",
    "properties": {"b": {"type": "integer"}, "a": {"type": "string"}},
    "required": ["a"],
}


def test_schema_normal_form_keeps_key_order_and_is_compact() -> None:
    spec = StructuredSpec.json_schema(SCHEMA)
    assert spec.value == json.dumps(SCHEMA, separators=(",", ":"))
    assert list(spec.schema["properties"]) == ["b", "a"]  # property order is output order: kept
    assert spec.param == "response_format.json_schema.schema"
    assert not spec.whitespace_flexible


def test_canonical_key_same_for_dict_and_text_differs_by_grammar_not_by_param() -> None:
    a = StructuredSpec.json_schema(SCHEMA)
    b = StructuredSpec.json_schema(json.dumps(SCHEMA, indent=2), param="guided_json")
    assert a.canonical_key() == b.canonical_key()
    assert a.canonical_key() != StructuredSpec.json_schema(SCHEMA, whitespace_flexible=True).canonical_key()
    reordered = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
        "required": ["a"],
    }
    assert a.canonical_key() != StructuredSpec.json_schema(reordered).canonical_key()
    assert StructuredSpec.regex("a+").canonical_key() != StructuredSpec.grammar("a+").canonical_key()
    assert (
        StructuredSpec.choice(["x", "y"]).canonical_key() == StructuredSpec.choice(("x", "y")).canonical_key()
    )


@pytest.mark.parametrize(
    "spec",
    [
        StructuredSpec.json_schema(SCHEMA, whitespace_flexible=True, param="structured_outputs.json"),
        StructuredSpec.json_object(),
        StructuredSpec.regex(r"\d+"),
        StructuredSpec.choice(["yes", 'no "quoted"', "中文"]),
        StructuredSpec.grammar('root ::= "a" | "b"'),
    ],
)
def test_wire_round_trip(spec: StructuredSpec) -> None:
    back = StructuredSpec.from_json(spec.to_json())
    assert back == spec and back.canonical_key() == spec.canonical_key()


@pytest.mark.parametrize(
    ("make", "param", "words"),
    [
        (
            lambda: StructuredSpec.json_schema("{not json"),
            "response_format.json_schema.schema",
            "not valid JSON",
        ),
        (lambda: StructuredSpec.json_schema([1, 2]), "response_format.json_schema.schema", "JSON object"),
        (
            lambda: StructuredSpec.json_schema({"x": float("nan")}, param="guided_json"),
            "guided_json",
            "non-finite",
        ),
        (lambda: StructuredSpec.regex("", param="guided_regex"), "guided_regex", "empty"),
        (lambda: StructuredSpec.regex(5), "structured_outputs.regex", "string"),  # type: ignore[arg-type]
        (lambda: StructuredSpec.choice([], param="guided_choice"), "guided_choice", "non-empty"),
        (lambda: StructuredSpec.choice(["a", 3], param="guided_choice"), "guided_choice[1]", "choice 1"),
        (lambda: StructuredSpec.choice(["a", ""]), "structured_outputs.choice[1]", "choice 1"),
        (lambda: StructuredSpec.choice("ab"), "structured_outputs.choice", "list"),  # type: ignore[arg-type]
        (lambda: StructuredSpec.create("xml", "x"), "structured_outputs", "unknown structured output kind"),
        (
            lambda: StructuredSpec.create("regex", "a", whitespace_flexible=True),
            "structured_outputs.regex",
            "JSON only",
        ),
        (lambda: StructuredSpec.create("json_object", {"type": "object"}), "response_format", "no value"),
        (lambda: StructuredSpec.from_json("[]"), "structured_outputs", "expected an object"),
        (
            lambda: StructuredSpec.from_json('{"kind":"regex","value":"a","extra":1}'),
            "structured_outputs",
            "expected an object",
        ),
    ],
)
def test_bad_input_is_invalid_request_naming_the_field(make, param: str, words: str) -> None:  # noqa: ANN001
    with pytest.raises(InvalidRequest) as e:
        make()
    assert e.value.param == param
    assert words in e.value.message


def test_limits_bound_size_depth_and_choices_before_any_compile() -> None:
    limits = SpecLimits(max_bytes=1000, max_depth=8, max_choices=3)
    with pytest.raises(InvalidRequest, match="too large"):
        StructuredSpec.create("regex", "a" * 1001, limits=limits)
    with pytest.raises(InvalidRequest, match="at most 3 choices"):
        StructuredSpec.create("choice", ["a", "b", "c", "d"], limits=limits)
    deep: dict = {"type": "object"}
    for _ in range(8):
        deep = {"type": "object", "properties": {"x": deep}}
    with pytest.raises(InvalidRequest, match="deeper than 8"):
        StructuredSpec.create("json_schema", deep, limits=limits)


def test_a_schema_nested_thousands_deep_costs_a_400_not_a_stack_overflow() -> None:
    text = "[" * 5000 + "]" * 5000  # under the size limit, far over the depth limit
    start = time.perf_counter()
    with pytest.raises(InvalidRequest, match="deeper than 64") as e:
        StructuredSpec.json_schema(text, param="guided_json")
    assert e.value.param == "guided_json"
    deep: dict = {}
    for _ in range(20000):
        deep = {"items": deep}
    with pytest.raises(InvalidRequest, match="deeper than 64"):
        StructuredSpec.json_schema(deep)
    assert time.perf_counter() - start < 2.0


def test_boolean_true_schema_means_any_json_and_grammar_syntax_is_detected() -> None:
    assert StructuredSpec.json_schema(True).schema == {}
    assert StructuredSpec.grammar('root ::= "a"').grammar_syntax == "gbnf"
    assert StructuredSpec.grammar('start: "a"').grammar_syntax == "lark"
    with pytest.raises(TypeError):
        _ = StructuredSpec.regex("a").schema
