"""StructuredSpec: what one request asks the output to match (a JSON schema, any JSON object, a regex, one of
a few choices, or a Lark / GBNF grammar), validated and normalised once where the request enters.

Pure (stdlib only, no grammar library): the gateway, the tokenizer model and the engine can all build and
check one, and it crosses the Triton boundary as JSON (`to_json` / `from_json`). What the grammar library
itself refuses (an unsupported keyword, a regex that does not compile) is found by the compiler
(`compiler.py`), which raises the same `InvalidRequest` with the same `param`.

Normalisation: a JSON schema is kept as compact JSON text with its key order intact (property order decides
the order of the generated object's keys, so two schemas differing only in key order are two grammars);
choices become a tuple. `canonical_key()` hashes that normal form plus the whitespace flag, not `param`
(where the spec came from does not change the grammar).

Bounded input: a spec larger than `limits.max_bytes`, a schema nested deeper than `limits.max_depth`, or more
than `limits.max_choices` choices is refused here, before any compiler sees it (a schema nested thousands deep
must cost a 400, not a stack overflow).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from paddlellm.errors import InvalidRequest

Kind = Literal["json_schema", "json_object", "regex", "choice", "grammar"]
KINDS: tuple[str, ...] = get_args(Kind)

# Where each kind comes from in OpenAI's request, when the caller does not say (error messages name it).
DEFAULT_PARAM: dict[str, str] = {
    "json_schema": "response_format.json_schema.schema",
    "json_object": "response_format",
    "regex": "structured_outputs.regex",
    "choice": "structured_outputs.choice",
    "grammar": "structured_outputs.grammar",
}


@dataclass(frozen=True)
class SpecLimits:
    """Bounds checked before compiling; beyond them a request is a 400 naming the limit."""

    max_bytes: int = 256 * 1024  # the spec's text (schema JSON, regex, grammar, all choices)
    max_depth: int = 64  # nesting of the schema's JSON objects and arrays
    max_choices: int = 4096


@dataclass(frozen=True)
class StructuredSpec:
    """One request's output constraint, in normal form. Build with `create` (or the per-kind helpers), which
    normalises raw request values; the constructor checks the normal form (so `from_json` cannot bypass it).

    value: json_schema: the schema as compact JSON text; json_object: ""; regex, grammar: the text;
    choice: the choices.
    whitespace_flexible: JSON only. False (default): compact JSON, no whitespace between tokens (a small
    model given free whitespace may pad until max_tokens); True: JSON whitespace allowed between tokens.
    param: the request field the spec came from, named by every error about it.
    """

    kind: Kind
    value: str | tuple[str, ...]
    whitespace_flexible: bool = False
    param: str = ""
    limits: SpecLimits = field(default=SpecLimits(), compare=False, repr=False)  # the receiver's, not wire

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidRequest(
                f"unknown structured output kind {self.kind!r}; expected one of {', '.join(KINDS)}",
                param=self.param or "structured_outputs",
            )
        if not self.param:
            object.__setattr__(self, "param", DEFAULT_PARAM[self.kind])
        if not isinstance(self.whitespace_flexible, bool):
            raise InvalidRequest("whitespace_flexible must be a boolean", param=self.param)
        if self.kind == "choice":
            self._check_choices()
        else:
            self._check_text()

    # -- construction from request values --------------------------------------------------------------

    @classmethod
    def create(
        cls,
        kind: str,
        value: Any = None,
        *,
        whitespace_flexible: bool = False,
        param: str = "",
        limits: SpecLimits | None = None,
    ) -> StructuredSpec:
        """Normalise a raw request value (a schema as a dict or JSON text, a list of choices, ...)."""
        limits = limits or SpecLimits()
        where = param or DEFAULT_PARAM.get(kind, "structured_outputs")
        if kind == "json_schema":
            value = _schema_text(value, where, limits)
        elif kind == "json_object":
            if value not in (None, "", {}):
                raise InvalidRequest("json_object takes no value", param=where)
            value = ""
        elif kind == "choice":
            if not isinstance(value, (list, tuple)):
                raise InvalidRequest("choice must be a list of strings", param=where)
            value = tuple(value)
        return cls(kind, value, whitespace_flexible, param, limits)  # type: ignore[arg-type]

    @classmethod
    def json_schema(
        cls, schema: Any, *, whitespace_flexible: bool = False, param: str = ""
    ) -> StructuredSpec:
        return cls.create("json_schema", schema, whitespace_flexible=whitespace_flexible, param=param)

    @classmethod
    def json_object(cls, *, whitespace_flexible: bool = False, param: str = "") -> StructuredSpec:
        return cls.create("json_object", whitespace_flexible=whitespace_flexible, param=param)

    @classmethod
    def regex(cls, pattern: str, *, param: str = "") -> StructuredSpec:
        return cls.create("regex", pattern, param=param)

    @classmethod
    def choice(cls, choices: list[str] | tuple[str, ...], *, param: str = "") -> StructuredSpec:
        return cls.create("choice", choices, param=param)

    @classmethod
    def grammar(cls, text: str, *, param: str = "") -> StructuredSpec:
        return cls.create("grammar", text, param=param)

    # -- derived values ----------------------------------------------------------------------------------

    @property
    def schema(self) -> dict[str, Any]:
        """The JSON schema (json_schema only)."""
        if self.kind != "json_schema":
            raise TypeError(f"a {self.kind} spec has no schema")
        return json.loads(self.value)  # type: ignore[arg-type]

    @property
    def grammar_syntax(self) -> Literal["lark", "gbnf"]:
        """grammar only: GBNF (llama.cpp's `root ::= ...`) or Lark (`start: ...`)."""
        return "gbnf" if "::=" in str(self.value) else "lark"

    def canonical_key(self) -> str:
        """sha256 of the normal form: equal for specs that compile to the same grammar."""
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        body = {"kind": self.kind, "value": value, "ws": self.whitespace_flexible and self._is_json}
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def to_json(self) -> str:
        """Wire form (e.g. in Triton's sampling_parameters)."""
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        body = {
            "kind": self.kind,
            "value": value,
            "whitespace_flexible": self.whitespace_flexible,
            "param": self.param,
        }
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(
        cls, text: str, *, param: str = "structured_outputs", limits: SpecLimits | None = None
    ) -> StructuredSpec:
        try:
            body = json.loads(text)
        except (TypeError, ValueError) as e:
            raise InvalidRequest(f"not valid JSON: {e}", param=param) from None
        if not isinstance(body, dict) or set(body) - {"kind", "value", "whitespace_flexible", "param"}:
            raise InvalidRequest(
                "expected an object with kind, value, whitespace_flexible, param", param=param
            )
        return cls.create(
            body.get("kind", ""),
            body.get("value"),
            whitespace_flexible=body.get("whitespace_flexible", False),
            param=body.get("param") or param,
            limits=limits,
        )

    def to_dict(self) -> dict[str, Any]:
        """The wire form as a JSON object (inside SamplingParams' JSON)."""
        return json.loads(self.to_json())  # type: ignore[no-any-return]

    @classmethod
    def from_request(cls, data: Any, *, param: str = "structured_outputs") -> StructuredSpec:
        """A request's structured-output object: our wire form ({kind, value, whitespace_flexible, param}) or
        vLLM's StructuredOutputsParams ({json | regex | choice | grammar | json_object: true}, exactly one;
        `whitespace_flexible` may be added, and vLLM's `disable_any_whitespace` is the default here)."""
        if isinstance(data, StructuredSpec):
            return data
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except ValueError as e:
                raise InvalidRequest(f"not valid JSON: {e}", param=param) from None
        if not isinstance(data, dict):
            raise InvalidRequest("must be a JSON object", param=param)
        if "kind" in data:
            return cls.from_json(json.dumps(data), param=param)
        vllm = {"json": "json_schema", "regex": "regex", "choice": "choice", "grammar": "grammar",
                "json_object": "json_object"}
        given = [k for k in vllm if data.get(k) not in (None, False)]
        extra = set(data) - set(vllm) - {"whitespace_flexible", "disable_any_whitespace"}
        if extra:
            raise InvalidRequest(f"unknown key(s): {', '.join(sorted(extra))}", param=param)
        if len(given) != 1:
            raise InvalidRequest(
                f"exactly one of {', '.join(vllm)} is needed, got {', '.join(given) or 'none'}", param=param
            )
        key = given[0]
        flexible = data.get("whitespace_flexible", False)
        if data.get("disable_any_whitespace") is False:
            flexible = True
        kind = vllm[key]
        value = None if kind == "json_object" else data[key]
        if kind in ("json_schema", "json_object"):
            return cls.create(kind, value, whitespace_flexible=flexible, param=f"{param}.{key}")
        if flexible:
            raise InvalidRequest(f"whitespace_flexible applies to JSON only, not {key}", param=param)
        return cls.create(kind, value, param=f"{param}.{key}")

    # -- checks ------------------------------------------------------------------------------------------

    @property
    def _is_json(self) -> bool:
        return self.kind in ("json_schema", "json_object")

    def _check_text(self) -> None:
        if not isinstance(self.value, str):
            raise InvalidRequest(f"{self.kind} must be a string", param=self.param)
        if self.kind in ("regex", "grammar") and not self.value:
            raise InvalidRequest(f"{self.kind} must not be empty", param=self.param)
        if self.kind == "json_object" and self.value:
            raise InvalidRequest("json_object takes no value", param=self.param)
        if self.whitespace_flexible and not self._is_json:
            raise InvalidRequest(
                f"whitespace_flexible applies to JSON only, not {self.kind}", param=self.param
            )
        _check_size(len(self.value.encode("utf-8")), self.param, self.limits)
        if self.kind == "json_schema":
            _schema_text(self.value, self.param, self.limits)  # normal form: parses, bounded, an object

    def _check_choices(self) -> None:
        choices = self.value
        if not isinstance(choices, tuple) or not choices:
            raise InvalidRequest("choice must be a non-empty list of strings", param=self.param)
        if len(choices) > self.limits.max_choices:
            raise InvalidRequest(f"at most {self.limits.max_choices} choices", param=self.param)
        for i, c in enumerate(choices):
            if not isinstance(c, str) or not c:
                raise InvalidRequest(f"choice {i} must be a non-empty string", param=f"{self.param}[{i}]")
        _check_size(sum(len(c.encode("utf-8")) for c in choices), self.param, self.limits)


def _check_size(n: int, param: str, limits: SpecLimits) -> None:
    if n > limits.max_bytes:
        raise InvalidRequest(f"too large: {n} bytes (limit {limits.max_bytes})", param=param)


def _schema_text(value: Any, param: str, limits: SpecLimits) -> str:
    """A schema (dict, or JSON text) as compact JSON text, key order kept; refused when not a JSON object (or
    boolean schema true), too deep or too large."""
    if isinstance(value, str):
        _check_size(len(value.encode("utf-8")), param, limits)
        # Depth before parsing: json.loads recurses, so a hostile document must not reach it.
        _check_text_depth(value, param, limits)
        try:
            value = json.loads(value, parse_constant=_no_constant)
        except ValueError as e:
            raise InvalidRequest(f"schema is not valid JSON: {e}", param=param) from None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise InvalidRequest("schema must be a JSON object", param=param)
    _check_depth(value, param, limits)
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidRequest(f"schema is not JSON: {e}", param=param) from None
    _check_size(len(text.encode("utf-8")), param, limits)
    return text


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _check_text_depth(text: str, param: str, limits: SpecLimits) -> None:
    """Bracket depth of JSON text, outside strings (a linear scan; exact for valid JSON)."""
    depth, in_str, escaped = 0, False, False
    for ch in text:
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > limits.max_depth:
                raise InvalidRequest(f"schema nested deeper than {limits.max_depth} levels", param=param)
        elif ch in "]}":
            depth -= 1


def _check_depth(value: Any, param: str, limits: SpecLimits) -> None:
    """Nesting of dicts and lists, iteratively (a dict from a caller may be arbitrarily deep)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limits.max_depth:
            raise InvalidRequest(f"schema nested deeper than {limits.max_depth} levels", param=param)
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
            elif isinstance(child, float) and not math.isfinite(child):
                raise InvalidRequest("schema contains a non-finite number", param=param)
