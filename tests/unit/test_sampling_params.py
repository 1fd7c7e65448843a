"""SamplingParams declared once: every field's rules come from its ParamSpec, and the parsers follow them."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from paddlellm.errors import InvalidRequest
from paddlellm.protocol.vllm_convention import sampling_from_vllm
from paddlellm.sampling import DEFAULTS, HISTORY_FIELDS, SPECS, SamplingParams, markdown_table


def _inside(name: str) -> object:
    """A value inside the field's range."""
    s = SPECS[name]
    if s.kind == "bool":
        return True
    if s.kind == "ids":
        return [int(s.lo or 0) + 3]
    lo = s.lo if s.lo is not None else 0
    v = lo + (0.5 if s.lo_open else 0)
    return int(math.ceil(v)) if s.kind == "int" else float(v)


def test_every_field_is_declared() -> None:
    assert set(SPECS) == {f.name for f in dataclasses.fields(SamplingParams)}
    assert DEFAULTS == {f.name: f.default for f in dataclasses.fields(SamplingParams)}
    assert set(HISTORY_FIELDS) == {"frequency_penalty", "presence_penalty"}


@pytest.mark.parametrize("name", [n for n, s in SPECS.items() if s.lo is not None or s.hi is not None])
def test_bounds_are_enforced_where_declared(name: str) -> None:
    s = SPECS[name]
    if name == "min_tokens":  # its upper bound is max_tokens (cross-field)
        base: dict[str, object] = {"max_tokens": None}
    else:
        base = {}
    for bound, open_, step in ((s.lo, s.lo_open, -1), (s.hi, s.hi_open, 1)):
        if bound is None:
            continue
        at = int(bound) if s.kind in ("int", "ids") else float(bound)
        outside = at if open_ else at + step * (1 if s.kind in ("int", "ids") else 0.001)
        value = [outside] if s.kind == "ids" else outside
        if s.kind == "int" and abs(outside) > 2**63:
            continue  # the seed's bounds are the int64 range itself
        with pytest.raises(InvalidRequest, match=name) as e:
            SamplingParams.from_dict({**base, name: value})
        assert e.value.param == name
        if not open_:
            SamplingParams.from_dict({**base, name: [at] if s.kind == "ids" else at})  # the bound is inside


@pytest.mark.parametrize(
    ("name", "value"),
    [("temperature", "1"), ("temperature", True), ("max_tokens", 2.5), ("top_k", True), ("ignore_eos", 1),
     ("stop_token_ids", [1, True]), ("logprobs", "3"), ("temperature", float("nan"))],
)
def test_wrong_types_are_refused_naming_the_field(name: str, value: object) -> None:
    with pytest.raises(InvalidRequest, match=f"'{name}'") as e:
        SamplingParams.from_dict({name: value})
    assert e.value.param == name


def test_nulls_mean_default_except_for_nullable_fields() -> None:
    p = SamplingParams.from_dict({"temperature": None, "max_tokens": None, "logprobs": None, "top_k": None})
    assert (p.temperature, p.max_tokens, p.logprobs, p.top_k) == (1.0, None, None, 0)
    assert SamplingParams.from_dict({"max_tokens": 4.0}).max_tokens == 4  # JSON 4.0 is 4


def test_unknown_key_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="unknown sampling parameter 'best_of'"):
        SamplingParams.from_dict({"best_of": 2})


def test_json_round_trip_keeps_every_field() -> None:
    p = SamplingParams(max_tokens=9, temperature=0.5, top_k=7, min_p=0.1, logprobs=3, prompt_logprobs=0,
                       stop_token_ids=(4, 5), seed=-3, echo=True)
    assert SamplingParams.from_json(p.to_json()) == p


def test_needs_history_follows_the_declarations() -> None:
    assert not SamplingParams().needs_history
    assert SamplingParams(presence_penalty=0.5).needs_history
    assert not SamplingParams(top_k=3, logprobs=2).needs_history


@pytest.mark.parametrize("name", [n for n, s in SPECS.items() if s.vllm and s.kind != "structured"])
def test_vllm_names_map_to_the_declared_fields(name: str) -> None:
    value = _inside(name)
    ours = sampling_from_vllm(json.dumps({SPECS[name].vllm: value}))
    expected = tuple(value) if isinstance(value, list) else value
    assert getattr(ours, name) == expected
    if SPECS[name].kind in ("int", "float"):  # genai-perf sends numbers as strings
        assert getattr(sampling_from_vllm(json.dumps({SPECS[name].vllm: str(value)})), name) == expected


def test_structured_outputs_take_our_wire_form_or_vllms() -> None:
    ours = SamplingParams.from_dict({"structured_outputs": {"choice": ["yes", "no"]}})
    spec = ours.structured_outputs
    assert spec is not None and (spec.kind, spec.value) == ("choice", ("yes", "no"))
    assert SamplingParams.from_json(ours.to_json()) == ours  # the wire form round-trips
    vllm = sampling_from_vllm(json.dumps({"structured_outputs": {"json": {"type": "object"}}}))
    assert vllm.structured_outputs is not None and vllm.structured_outputs.kind == "json_schema"
    as_text = sampling_from_vllm(json.dumps({"structured_outputs": json.dumps({"regex": "[ab]+"})}))
    assert as_text.structured_outputs is not None and as_text.structured_outputs.value == "[ab]+"
    for bad in ({"json": {}, "regex": "a"}, {}, {"jsn": {}}, ["json"]):
        with pytest.raises(InvalidRequest) as e:
            SamplingParams.from_dict({"structured_outputs": bad})
        assert e.value.param == "structured_outputs"


def test_vllm_convention_refuses_what_it_cannot_honour() -> None:
    with pytest.raises(InvalidRequest, match="'n'") as e:
        sampling_from_vllm(json.dumps({"n": 2}))
    assert e.value.param == "n"
    assert sampling_from_vllm(json.dumps({"n": 1, "top_k": -1})).top_k == -1
    with pytest.raises(InvalidRequest, match="logprobs"):
        sampling_from_vllm(json.dumps({"logprobs": 21}))


def test_markdown_table_has_a_row_per_field() -> None:
    rows = markdown_table().splitlines()[2:]
    assert [r.split("|")[1].strip().strip("`") for r in rows] == list(SPECS)
    assert "| in (0, 1] |" in next(r for r in rows if r.startswith("| `top_p`"))
