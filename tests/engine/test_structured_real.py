"""Structured output on the default model (SmolLM2-135M-Instruct, fp32 weights: quantization "none"), one
engine for the module, 16 requests at once: every answer that finished with "stop" validates against its JSON
schema (nested objects, arrays with min/maxItems, enums, integer and number ranges, string patterns, anyOf
with null, additionalProperties false), greedy and seeded sampling; json_object answers parse to an object;
choice answers are one of the choices; regex answers full-match; a regex that accepts any text gives the same
tokens as no grammar (greedy), so the mask disturbs nothing it should not; a bad schema is an InvalidRequest
naming the field before anything runs."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator

import jsonschema
import pytest

from paddlellm.errors import InvalidRequest
from paddlellm.sampling import SamplingParams
from paddlellm.structured.spec import StructuredSpec

pytest.importorskip("paddle", exc_type=ModuleNotFoundError)

from paddlellm.llm import LLM, OfflineCompletion  # noqa: E402

MAX_TOKENS = 96
CONCURRENT = 16

SCHEMAS: dict[str, dict] = {
    "nested": {
        "type": "object",
        "properties": {
            "person": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 24},
                    "address": {
                        "type": "object",
                        "properties": {
                            "city": {"type": "string", "maxLength": 24},
                            "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                        },
                        "required": ["city", "zip"],
                        "additionalProperties": False,
                    },
                },
                "required": ["name", "address"],
                "additionalProperties": False,
            }
        },
        "required": ["person"],
        "additionalProperties": False,
    },
    "array": {
        "type": "object",
        "properties": {
            "colors": {
                "type": "array",
                "items": {"type": "string", "maxLength": 12},
                "minItems": 2,
                "maxItems": 4,
            }
        },
        "required": ["colors"],
        "additionalProperties": False,
    },
    "enum": {
        "type": "object",
        "properties": {
            "sentiment": {"enum": ["positive", "negative", "neutral"]},
            "language": {"type": "string", "enum": ["en", "fr", "de"]},
        },
        "required": ["sentiment", "language"],
        "additionalProperties": False,
    },
    "ranges": {
        "type": "object",
        "properties": {
            "age": {"type": "integer", "minimum": 18, "maximum": 99},
            "rating": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10},
            "height_m": {"type": "number", "minimum": 0.5, "maximum": 2.5},
        },
        "required": ["age", "rating", "height_m"],
        "additionalProperties": False,
    },
    "patterns": {
        "type": "object",
        "properties": {
            "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"},
            "email": {"type": "string", "pattern": "^[a-z]{1,10}@[a-z]{1,10}\\.com$"},
        },
        "required": ["code", "email"],
        "additionalProperties": False,
    },
    "nullable": {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 40},
            "subtitle": {"anyOf": [{"type": "string", "maxLength": 40}, {"type": "null"}]},
        },
        "required": ["title", "subtitle"],
        "additionalProperties": False,
    },
}

TOPICS = ("a film", "a book", "a city", "a friend", "a song", "a car", "a shop", "a game")


@pytest.fixture(scope="module")
def llm(default_model_dir: str) -> Iterator[LLM]:
    # No prefix cache: a cached prefix changes the prefill's shape, and acceptance 4 compares greedy tokens.
    with LLM(
        default_model_dir,
        num_threads=2,
        quantization="none",
        max_num_seqs=CONCURRENT,
        max_model_len=1024,
        enable_prefix_caching=False,
    ) as llm:
        yield llm


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _params(spec: StructuredSpec, i: int) -> SamplingParams:
    """Even i greedy, odd i seeded sampling."""
    if i % 2 == 0:
        return SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, structured_outputs=spec)
    return SamplingParams(max_tokens=MAX_TOKENS, temperature=0.8, top_p=0.95, seed=i, structured_outputs=spec)


def _run(llm: LLM, spec: StructuredSpec, ask: str, max_tokens: int = MAX_TOKENS) -> list[OfflineCompletion]:
    messages = [
        chat(f"{ask} ({TOPICS[i % len(TOPICS)]}, answer {i}). Reply in JSON.") for i in range(CONCURRENT)
    ]
    params = [dataclasses.replace(_params(spec, i), max_tokens=max_tokens) for i in range(CONCURRENT)]
    return llm.chat(messages, params)


def _stopped(outs: list[OfflineCompletion], at_least: int = CONCURRENT // 2) -> list[OfflineCompletion]:
    reasons = [c.finish_reason for c in outs]
    assert set(reasons) <= {"stop", "length"}, reasons
    stopped = [c for c in outs if c.finish_reason == "stop"]
    assert len(stopped) >= at_least, [c.text for c in outs]  # most answers complete within max_tokens
    return stopped


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_every_stopped_answer_validates(llm: LLM, name: str) -> None:
    schema = SCHEMAS[name]
    spec = StructuredSpec.json_schema(schema)
    outs = _run(llm, spec, f"Describe something as JSON with this schema: {json.dumps(schema)}")
    for c in _stopped(outs):
        jsonschema.validate(json.loads(c.text), schema)
    for c in outs:  # a cut answer is still a prefix the grammar allowed: never text around the JSON
        assert c.text.startswith("{"), c.text


def test_json_object_answers_parse_to_an_object(llm: LLM) -> None:
    """Any object: nothing bounds it, and this small model writes long ones, so fewer complete in time."""
    outs = _run(llm, StructuredSpec.json_object(), "Give a JSON object with two short keys about", 160)
    for c in _stopped(outs, CONCURRENT // 4):
        assert isinstance(json.loads(c.text), dict)
    assert all(c.text.startswith("{") for c in outs)


def test_choice_answers_are_one_of_the_choices(llm: LLM) -> None:
    choices = ["positive", "negative", "neutral"]
    messages = [chat(f"Is this review positive or negative? 'I liked {t}.'") for t in TOPICS * 2]
    params = [_params(StructuredSpec.choice(choices), i) for i in range(len(messages))]
    outs = llm.chat(messages, params)
    assert all(c.finish_reason == "stop" and c.text in choices for c in outs), [c.text for c in outs]


def test_regex_answers_full_match(llm: LLM) -> None:
    pattern = r"(yes|no), because [a-z ]{5,40}\."
    messages = [chat(f"Is {t} good? Answer yes or no with a reason.") for t in TOPICS * 2]
    outs = llm.chat(messages, [_params(StructuredSpec.regex(pattern), i) for i in range(len(messages))])
    for c in _stopped(outs):
        assert re.fullmatch(pattern, c.text), c.text


def test_a_grammar_that_allows_everything_changes_no_greedy_token(llm: LLM) -> None:
    """Acceptance 4: the same tokens and finish reasons with a regex accepting any text as without one."""
    messages = [chat(q) for q in ("Tell me about Paris.", "Write a haiku about rain.", "What is 2+2?", "Hi!")]
    plain = llm.chat(messages, SamplingParams(max_tokens=48, temperature=0.0))
    anything = SamplingParams(
        max_tokens=48, temperature=0.0, structured_outputs=StructuredSpec.regex(r"(.|\n)*")
    )
    llm.engine.take_grammar_timings()
    masked = llm.chat(messages, anything)
    steps = len(llm.engine.take_grammar_timings().mask_seconds)
    assert steps == max(len(c.token_ids) for c in masked)  # every step of the run applied masks
    assert [c.token_ids for c in masked] == [c.token_ids for c in plain]
    assert [c.finish_reason for c in masked] == [c.finish_reason for c in plain]
    assert any(c.finish_reason == "stop" for c in plain)  # EOS allowed too, where the model wants it


def test_a_bad_schema_is_refused_naming_the_field_before_anything_runs(llm: LLM) -> None:
    bad = StructuredSpec.json_schema(
        {"type": "object", "not": {}}, param="response_format.json_schema.schema"
    )
    ok = SamplingParams(max_tokens=4)
    with pytest.raises(InvalidRequest, match="'not'") as e:
        llm.generate(["a", "b"], [ok, SamplingParams(max_tokens=4, structured_outputs=bad)])
    assert e.value.param == "response_format.json_schema.schema"
    assert not llm.engine.has_unfinished()
