"""Triton's LLM convention (the inputs of Triton's vLLM backend) -> our typed request values.

Tools that know Triton's LLM world (genai-perf `--backend vllm`, Triton's OpenAI frontend, hand-written
`tritonclient` code) send `text_input`, `stream`, `exclude_input_in_output` and `sampling_parameters`: vLLM's
SamplingParams as a JSON object. This module turns the last into our SamplingParams, strictly: a vLLM
parameter we cannot honour (stop strings, n > 1, repetition_penalty, ...) fails naming it, unless its value is
the one that changes nothing. Values may be JSON strings (genai-perf sends `"max_tokens": "128"`); the
vLLM backend converts them by the field's type, and so do we, but a string that is no such value fails.
The defaults are vLLM's: 16 tokens, temperature 1, and no streaming unless `stream` is true.
"""

from __future__ import annotations

import json
from typing import Any

from paddlellm.errors import InvalidRequest
from paddlellm.sampling import SPECS, SamplingParams

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
