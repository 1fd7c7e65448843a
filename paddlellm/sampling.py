"""SamplingParams: what one request asks of the sampler, each field declared once with its rules.

Every field carries a `ParamSpec` (its type, range, default, OpenAI request name, name in Triton's
vLLM-backend `sampling_parameters`, and whether the sampler needs the request's output history). From those
declarations come: this class's validation and its strict JSON parser (`from_dict`, used where a request
enters: the gateway, and for direct Triton users the tokenizer model), the vLLM-convention mapping
(`paddlellm/protocol/vllm_convention.py`), the gateway's request constraints (`gateway/openai_schema.py`) and
the table in `docs/api.md` (`markdown_table`); tests check each against `SPECS`.

Adding a sampling parameter: declare the field here, then honour it in the sampler (docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from paddlellm.errors import InvalidRequest
from paddlellm.structured.spec import StructuredSpec

MAX_SEED = 2**63 - 1
MAX_STREAM_INTERVAL = 4096
AUTO_STREAM_INTERVAL = 0  # stream_interval: tokens per response chosen by the serving adapter from its load
MAX_LOGPROBS = 20  # top alternatives per token (OpenAI's top_logprobs limit; vLLM's default max_logprobs)

Kind = Literal["int", "float", "bool", "ids", "structured"]


@dataclass(frozen=True)
class ParamSpec:
    """One sampling parameter's contract. Bounds are inclusive unless `*_open`; None: unbounded."""

    kind: Kind
    doc: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    nullable: bool = False  # JSON null is a value (not "use the default"): max_tokens, seed, logprobs
    openai: str | None = None  # the request field of both OpenAI endpoints with this meaning; None: none
    vllm: str | None = None  # the key in Triton's vLLM-backend sampling_parameters; None: not accepted there
    needs_history: bool = False  # the sampler reads the request's output ids for it

    def check(self, name: str, value: Any) -> None:
        """Range check of a coerced value; raises InvalidRequest naming `name`."""
        if value is None or self.kind in ("bool", "structured"):
            return
        values = value if self.kind == "ids" else (value,)
        for v in values:
            if isinstance(v, float) and math.isnan(v):
                raise InvalidRequest(f"'{name}' must be a number, got {value!r}", param=name)
            if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
                raise InvalidRequest(f"'{name}' {self.range_text()}, got {value!r}", param=name)
            if self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi):
                raise InvalidRequest(f"'{name}' {self.range_text()}, got {value!r}", param=name)

    def range_text(self) -> str:
        each = "each must be" if self.kind == "ids" else "must be"
        lo = None if self.lo is None else _num(self.lo)
        hi = None if self.hi is None else _num(self.hi)
        if lo is not None and hi is not None:
            return f"{each} in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        if lo is not None:
            return f"{each} {'>' if self.lo_open else '>='} {lo}"
        if hi is not None:
            return f"{each} {'<' if self.hi_open else '<='} {hi}"
        return "is unbounded"

    def coerce(self, name: str, value: Any) -> Any:
        """A JSON value -> the field's Python value, strictly (bool is no number, 3.5 no integer)."""
        if value is None:
            return None
        if self.kind == "int":
            if isinstance(value, float) and value.is_integer():
                value = int(value)  # JSON does not tell 3 from 3.0
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidRequest(f"'{name}' must be an integer, got {value!r}", param=name)
            return value
        if self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidRequest(f"'{name}' must be a number, got {value!r}", param=name)
            return float(value)
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise InvalidRequest(f"'{name}' must be a boolean, got {value!r}", param=name)
            return value
        if self.kind == "structured":
            return StructuredSpec.from_request(value, param=name)
        if not isinstance(value, (list, tuple)) or any(
            isinstance(v, bool) or not isinstance(v, int) for v in value
        ):
            raise InvalidRequest(f"'{name}' must be a list of integers", param=name)
        return tuple(value)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _p(default: Any, spec: ParamSpec) -> Any:
    return field(default=default, metadata={"spec": spec})


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int | None = _p(16, ParamSpec(
        "int", "tokens to generate at most; null: up to the end of the context (chat's default)",
        lo=1, nullable=True, openai="max_tokens", vllm="max_tokens"))
    temperature: float = _p(1.0, ParamSpec(
        "float", "0 = greedy", lo=0.0, hi=2.0, openai="temperature", vllm="temperature"))
    top_p: float = _p(1.0, ParamSpec(
        "float", "nucleus: the smallest set of tokens whose probability reaches top_p",
        lo=0.0, lo_open=True, hi=1.0, openai="top_p", vllm="top_p"))
    top_k: int = _p(0, ParamSpec(
        "int", "only the k most likely tokens; 0 or -1: all", lo=-1, openai="top_k", vllm="top_k"))
    min_p: float = _p(0.0, ParamSpec(
        "float", "drop tokens less likely than min_p times the most likely one",
        lo=0.0, hi=1.0, openai="min_p", vllm="min_p"))
    frequency_penalty: float = _p(0.0, ParamSpec(
        "float", "logit -= frequency_penalty x the token's count in the output", lo=-2.0, hi=2.0,
        openai="frequency_penalty", vllm="frequency_penalty", needs_history=True))
    presence_penalty: float = _p(0.0, ParamSpec(
        "float", "logit -= presence_penalty if the token is in the output", lo=-2.0, hi=2.0,
        openai="presence_penalty", vllm="presence_penalty", needs_history=True))
    # None: the engine derives one, so a recompute after preemption draws the same.
    seed: int | None = _p(None, ParamSpec(
        "int", "makes sampling reproducible", lo=-MAX_SEED - 1, hi=MAX_SEED, nullable=True,
        openai="seed", vllm="seed"))
    min_tokens: int = _p(0, ParamSpec(
        "int", "EOS and stop_token_ids are suppressed until this many tokens are generated",
        lo=0, openai="min_tokens", vllm="min_tokens"))
    stop_token_ids: tuple[int, ...] = _p((), ParamSpec(
        "ids", "token ids that end the generation (after min_tokens)", lo=0,
        openai="stop_token_ids", vllm="stop_token_ids"))
    ignore_eos: bool = _p(False, ParamSpec(
        "bool", "generate past EOS", openai="ignore_eos", vllm="ignore_eos"))
    # The log-probability of each generated token and of this many top alternatives (raw logits'
    # log-softmax); None: not computed. The OpenAI names differ per endpoint (chat: logprobs + top_logprobs,
    # completions: logprobs), so the gateway maps them.
    logprobs: int | None = _p(None, ParamSpec(
        "int", "per generated token: its log-probability and the top this-many alternatives",
        lo=0, hi=MAX_LOGPROBS, nullable=True, vllm="logprobs"))
    prompt_logprobs: int | None = _p(None, ParamSpec(
        "int", "per prompt token: its log-probability and the top this-many alternatives (the first: null); "
        "the whole prompt is computed (no prefix-cache read)",
        lo=0, hi=MAX_LOGPROBS, nullable=True, openai="prompt_logprobs", vllm="prompt_logprobs"))
    # The output must match this (a JSON schema, any JSON object, a regex, one of some choices, a grammar):
    # the sampler masks every token the grammar does not allow (paddlellm/structured). The OpenAI names
    # (response_format, structured_outputs, guided_*) are mapped by the gateway.
    structured_outputs: StructuredSpec | None = _p(None, ParamSpec(
        "structured", "the output matches this grammar (JSON schema, JSON object, regex, choice, Lark/GBNF)",
        nullable=True, vllm="structured_outputs"))
    # Output granularity, not sampling: after the first token, the serving adapter sends a response every
    # `stream_interval` tokens (and at the end). Fewer responses mean fewer wake-ups along the serving path.
    # 0 (AUTO_STREAM_INTERVAL): the adapter decides per step, per token while the serving path has room.
    stream_interval: int = _p(0, ParamSpec(
        "int", "tokens per streamed response after the first; 0: automatic", lo=0, hi=MAX_STREAM_INTERVAL))
    # False: one response at the end carrying every token (vLLM's FINAL_ONLY; Triton's vLLM-backend `stream`
    # input, false by default). True: tokens as they come, `stream_interval` at a time.
    stream: bool = _p(True, ParamSpec("bool", "responses as tokens come (else one at the end)"))
    # The first response's text starts with the prompt as tokenized (OpenAI completions' `echo`; the vLLM
    # backend's `exclude_input_in_output` false).
    echo: bool = _p(False, ParamSpec("bool", "the output text starts with the prompt"))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            f.metadata["spec"].check(f.name, getattr(self, f.name))
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise InvalidRequest(
                f"'min_tokens' must be <= max_tokens ({self.max_tokens}), got {self.min_tokens}",
                param="min_tokens",
            )

    def with_room(self, room: int) -> SamplingParams:
        """Resolve max_tokens=None to the `room` left in the context (at least 1, so limits still apply)."""
        if self.max_tokens is not None:
            return self
        room = max(1, room)
        return dataclasses.replace(self, max_tokens=room, min_tokens=min(self.min_tokens, room))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def needs_history(self) -> bool:
        """The sampler reads this request's output ids (a field with needs_history is not at its default)."""
        return any(getattr(self, name) != DEFAULTS[name] for name in HISTORY_FIELDS)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["stop_token_ids"] = list(self.stop_token_ids)
        if self.structured_outputs is not None:
            d["structured_outputs"] = self.structured_outputs.to_dict()
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Any) -> SamplingParams:
        """Strict: unknown keys and wrong types raise InvalidRequest naming the field. A null is "not
        given" (the default), except for nullable fields, where it is the value."""
        if not isinstance(data, dict):
            raise InvalidRequest("sampling parameters must be a JSON object", param="sampling")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            spec = SPECS.get(key)
            if spec is None:
                raise InvalidRequest(f"unknown sampling parameter '{key}'", param=key)
            if value is None and not spec.nullable:
                continue
            kwargs[key] = spec.coerce(key, value)
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str | bytes) -> SamplingParams:
        if not text:
            return cls()
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidRequest(f"sampling parameters are not valid JSON: {e}", param="sampling") from None
        return cls.from_dict(data)


SPECS: dict[str, ParamSpec] = {f.name: f.metadata["spec"] for f in dataclasses.fields(SamplingParams)}
DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(SamplingParams)}
HISTORY_FIELDS: tuple[str, ...] = tuple(name for name, s in SPECS.items() if s.needs_history)


def markdown_table() -> str:
    """The table of sampling parameters in docs/api.md (a test keeps the two equal)."""
    rows = [
        "| parameter | OpenAI request field | vLLM `sampling_parameters` | type | range | default "
        "| meaning |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in SPECS.items():
        default = DEFAULTS[name]
        shown = json.dumps(list(default) if isinstance(default, tuple) else default)
        rng = "" if s.kind in ("bool", "structured") else s.range_text().replace("must be ", "")
        rows.append(
            f"| `{name}` | {_code(s.openai)} | {_code(s.vllm)} | {_KIND_TEXT.get(s.kind, s.kind)}"
            f"{' or null' if s.nullable else ''} "
            f"| {rng} | `{shown}` | {s.doc} |"
        )
    return "\n".join(rows)


_KIND_TEXT = {"structured": "object"}


def _code(name: str | None) -> str:
    return f"`{name}`" if name else "-"


if __name__ == "__main__":  # python -m paddlellm.sampling: the docs/api.md table
    print(markdown_table())
