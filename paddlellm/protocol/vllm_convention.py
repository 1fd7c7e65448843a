"""Triton's LLM convention (the inputs of Triton's vLLM backend) -> our typed request values.

Tools that know Triton's LLM world (genai-perf `--backend vllm`, Triton's OpenAI frontend, hand-written
`tritonclient` code) send `text_input`, `stream`, `exclude_input_in_output` and `sampling_parameters`: vLLM's
SamplingParams as a JSON object. This module turns the last into our SamplingParams, strictly: a vLLM
parameter we cannot honour (stop strings, n > 1, repetition_penalty, ...) fails naming it, unless its value is
the one that changes nothing. Values may be JSON strings (genai-perf sends `"max_tokens": "128"`); the
vLLM backend converts them by the field's type, and so do we, but a string that is no such value fails.
The defaults are vLLM's: 16 tokens, temperature 1, and no streaming unless `stream` is true.

Structured output: vLLM's `structured_outputs` object ({json | regex | choice | grammar | json_object: true},
plus `disable_any_whitespace` / our `whitespace_flexible`), its older name `guided_decoding`, or the older
top-level `guided_json / guided_regex / guided_choice / guided_grammar`; at most one of them (a second is an
error naming it). Each may be JSON text. vLLM's options that change nothing here (`backend`,
`disable_fallback`, ...) are accepted at any value; a whitespace pattern or a structural tag is refused.
"""

from __future__ import annotations

import json
from typing import Any

from paddlellm.errors import InvalidRequest
from paddlellm.sampling import SPECS, SamplingParams, StructuredSpec

# vLLM name -> our SamplingParams field (the same meaning), from the declarations.
_BY_VLLM_NAME = {spec.vllm: name for name, spec in SPECS.items() if spec.vllm}

# vLLM parameters we do not implement, accepted at the value that leaves the output unchanged. The ones we
# do implement come from the declarations in paddlellm/sampling.py (ParamSpec.vllm).
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (1,),  # n choices: the OpenAI gateway fans a request out; one Triton request is one sequence
    "best_of": (None, 1),
    "repetition_penalty": (1.0,),
    "stop": (None, "", ()),
    "include_stop_str_in_output": (None, False, True),  # matters only with stop strings
    "skip_special_tokens": (True,),
    "spaces_between_special_tokens": (True,),
    "detokenize": (True,),
    "bad_words": (None, ()),
    "truncate_prompt_tokens": (None,),
}
_WHY = {
    "stop": "stop strings are matched by the OpenAI gateway, which sees the whole text; send stop_token_ids",
}


def sampling_from_vllm(text: str | bytes) -> SamplingParams:
    """`sampling_parameters` (vLLM's SamplingParams as JSON; "" = the defaults) -> SamplingParams."""
    if not text:
        return SamplingParams()
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidRequest(
            f"sampling_parameters is not valid JSON: {e}", param="sampling_parameters"
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequest("sampling_parameters must be a JSON object", param="sampling_parameters")
    ours: dict[str, Any] = {}
    spec = _structured(data)  # takes its keys out of `data`
    if spec is not None:
        ours["structured_outputs"] = spec
    for key, value in data.items():
        if value is None and not (key in _BY_VLLM_NAME and SPECS[_BY_VLLM_NAME[key]].nullable):
            continue  # vLLM drops nulls so its defaults apply
        if key in _BY_VLLM_NAME:
            ours[_BY_VLLM_NAME[key]] = None if value is None else _convert(key, value)
        elif key in _NEUTRAL:
            if _normalize(key, value) not in _NEUTRAL[key]:
                why = _WHY.get(key, "not supported by this engine")
                raise InvalidRequest(f"sampling_parameters '{key}' = {value!r}: {why}", param=key)
        else:
            raise InvalidRequest(f"unknown or unsupported sampling parameter '{key}'", param=key)
    return SamplingParams.from_dict(ours)


# Structured-output objects and the older top-level fields (key -> the kind it asks for; None: an object).
_STRUCTURED: dict[str, str | None] = {
    "structured_outputs": None,
    "guided_decoding": None,  # vLLM <= 0.10's SamplingParams name for the same object
    "guided_json": "json_schema",
    "guided_regex": "regex",
    "guided_choice": "choice",
    "guided_grammar": "grammar",
}
_JSON_KEYS = ("json", "json_object")
# vLLM's object options: any value changes nothing here (one grammar library, no fallback to choose) ...
_IGNORED_OPTIONS = ("backend", "disable_fallback", "_backend", "_backend_was_auto")
# ... or only these values do.
_NEUTRAL_OPTIONS: dict[str, tuple[Any, ...]] = {
    "whitespace_pattern": (None,),
    "structural_tag": (None,),
    "disable_additional_properties": (None, False),
}


def _structured(data: dict[str, Any]) -> StructuredSpec | None:
    """The one structured-output spec of `sampling_parameters` (its keys are removed from `data`)."""
    found: list[tuple[str, Any]] = []
    for key in _STRUCTURED:
        value = data.pop(key, None)
        if value is not None:
            found.append((key, value))
    pattern = data.pop("guided_whitespace_pattern", None)
    if pattern is not None:
        raise InvalidRequest(
            "guided_whitespace_pattern is not supported: JSON is compact, or flexible with "
            "structured_outputs.whitespace_flexible",
            param="guided_whitespace_pattern",
        )
    data.pop("guided_decoding_backend", None)  # one grammar library: any name changes nothing
    if not found:
        return None
    if len(found) > 1:
        raise InvalidRequest(
            f"only one structured output constraint per request; {found[0][0]} is already one",
            param=found[1][0],
        )
    key, value = found[0]
    kind = _STRUCTURED[key]
    if kind is not None:
        if kind == "choice" and isinstance(value, str):
            value = _json(key, value)
        return StructuredSpec.create(kind, value, param=key)
    if isinstance(value, str):
        value = _json(key, value)
    if not isinstance(value, dict):
        raise InvalidRequest(f"{key} must be a JSON object", param=key)
    return StructuredSpec.from_request(_vllm_object(key, value), param=key)


def _vllm_object(key: str, value: dict[str, Any]) -> dict[str, Any]:
    """vLLM's StructuredOutputsParams as sent (all its fields, maybe) -> the keys StructuredSpec reads."""
    out = {}
    for name, v in value.items():
        if name in _IGNORED_OPTIONS:
            continue
        if name in _NEUTRAL_OPTIONS:
            if v not in _NEUTRAL_OPTIONS[name]:
                raise InvalidRequest(f"{key}.{name} is not supported by this engine", param=f"{key}.{name}")
            continue
        out[name] = v
    # vLLM's default (false: whitespace allowed) means nothing to a regex, a choice or a grammar.
    json_kind = any(out.get(k) not in (None, False) for k in _JSON_KEYS)
    if not json_kind and out.get("disable_any_whitespace") is False:
        del out["disable_any_whitespace"]
    return out


def _json(key: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise InvalidRequest(f"{key} is not valid JSON: {e}", param=key) from None


def _convert(key: str, value: Any) -> Any:
    """A JSON string stands for the value it spells (as the vLLM backend converts by type)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    kind = SPECS[_BY_VLLM_NAME[key]].kind
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "bool":
            return {"true": True, "false": False, "1": True, "0": False}[text.lower()]
        if kind == "ids":
            return json.loads(text)
    except (ValueError, KeyError):
        pass
    raise InvalidRequest(f"sampling_parameters '{key}': cannot read {value!r}", param=key)


def _normalize(key: str, value: Any) -> Any:
    if isinstance(value, list):
        return tuple(value) if value else ()
    if isinstance(value, str) and key != "stop":
        try:
            return json.loads(value.lower())
        except ValueError:
            return value
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value) if key == "repetition_penalty" else value
    return value
