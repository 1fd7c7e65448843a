"""Structured-output request fields (OpenAI's `response_format`, vLLM's `structured_outputs` and its older
`guided_*`) and their mapping to the one `StructuredSpec` the engine honours (docs/api.md).

Shapes are checked by pydantic, strictly, so `/openapi.json` states them; what spans several fields is checked
in `structured_spec`: at most one constraint per request (a second one is a 400 naming it, in the order
response_format, structured_outputs.{json, regex, choice, grammar, json_object}, guided_json, guided_regex,
guided_choice, guided_grammar). Each spec's `param` is the exact field the client used, so the engine's
compile errors (an unsupported keyword, a regex that does not parse) come back as a 400 naming that field.

Whitespace: compact JSON unless `structured_outputs.whitespace_flexible` is true or vLLM's
`structured_outputs.disable_any_whitespace` is false; a `structured_outputs` object with only these options
applies them to the request's `response_format` or `guided_json` (as vLLM combines the two). They mean
nothing to a regex, a choice or a grammar, which fix their own whitespace.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

from paddlellm.errors import InvalidRequest
from paddlellm.sampling import StructuredSpec

# The spec's own bound (its SpecLimits default, read through the dataclass: the gateway imports only
# paddlellm.sampling of the engine's modules).
_LIMITS = next(f.default for f in dataclasses.fields(StructuredSpec) if f.name == "limits")
MAX_CHOICES: int = _LIMITS.max_choices

_LOOSE = ConfigDict(strict=True, extra="ignore")  # OpenAI's objects: unknown keys ignored, as elsewhere
_FORMATS = ("text", "json_object", "json_schema")

Text = Annotated[str, Field(min_length=1)]
Choices = Annotated[list[Text], Field(min_length=1, max_length=MAX_CHOICES)]


class JsonSchemaFormat(BaseModel):
    """`response_format.json_schema`: what the openai SDK sends (name, schema, strict)."""

    model_config = _LOOSE

    name: str
    schema_: dict[str, Any] = Field(alias="schema", description="the JSON schema the answer matches")
    strict: bool | None = Field(None, description="accepted; the schema is always enforced here")
    description: str | None = None


class TextFormat(BaseModel):
    model_config = _LOOSE
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    model_config = _LOOSE
    type: Literal["json_object"]


class JsonSchemaResponseFormat(BaseModel):
    model_config = _LOOSE
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


def _format_tag(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    # The tag carries a "-": error locations drop it (gateway.openai_errors.param_from_loc).
    return f"type-{kind}" if kind in _FORMATS else None


ResponseFormat = Annotated[
    Annotated[TextFormat, Tag("type-text")]
    | Annotated[JsonObjectFormat, Tag("type-json_object")]
    | Annotated[JsonSchemaResponseFormat, Tag("type-json_schema")],
    Discriminator(
        _format_tag,
        custom_error_type="invalid_response_format",
        custom_error_message="must be an object whose 'type' is 'text', 'json_object' or 'json_schema'",
    ),
]


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs` (StructuredOutputsParams): at most one of json, regex, choice, grammar,
    json_object; `whitespace_flexible` (ours) or `disable_any_whitespace: false` (vLLM's): JSON whitespace."""

    model_config = ConfigDict(strict=True, extra="forbid")  # vLLM's options we do not implement: a 400

    json_: dict[str, Any] | None = Field(None, alias="json", description="a JSON schema the answer matches")
    regex: Text | None = Field(None, description="a regex the whole answer matches")
    choice: Choices | None = Field(None, description="the answer is one of these strings")
    grammar: Text | None = Field(None, description="a Lark grammar, or GBNF (text with `::=`)")
    json_object: bool | None = Field(None, description="true: the answer is a JSON object")
    whitespace_flexible: bool | None = Field(
        None, description="true: JSON whitespace allowed between tokens (default: compact JSON)"
    )
    disable_any_whitespace: bool | None = Field(None, description="vLLM's: false is whitespace_flexible")
    disable_fallback: bool | None = Field(None, description="accepted; there is one grammar library")

    def flexible(self) -> bool:
        return self.whitespace_flexible is True or self.disable_any_whitespace is False


class StructuredFields(BaseModel):
    """The request fields (both endpoints) that ask for structured output."""

    model_config = _LOOSE

    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    guided_json: dict[str, Any] | None = Field(None, description="vLLM's older structured_outputs.json")
    guided_regex: Text | None = Field(None, description="vLLM's older structured_outputs.regex")
    guided_choice: Choices | None = Field(None, description="vLLM's older structured_outputs.choice")
    guided_grammar: Text | None = Field(None, description="vLLM's older structured_outputs.grammar")
    # vLLM's: a regex for the whitespace between JSON tokens. Not supported (see whitespace_flexible).
    guided_whitespace_pattern: Any = Field(
        None, json_schema_extra={"type": "null"}, description="not supported: only null"
    )
    guided_decoding_backend: str | None = Field(None, description="accepted; there is one grammar library")

    @field_validator("guided_whitespace_pattern")
    @classmethod
    def _no_whitespace_pattern(cls, v: Any) -> Any:
        if v is not None:
            raise ValueError(
                "'guided_whitespace_pattern' is not supported; JSON is compact, or flexible with "
                "structured_outputs.whitespace_flexible"
            )
        return v

    def constraints(self) -> list[tuple[str, str, Any]]:
        """(param, kind, value) of every constraint given, in the order the docs state."""
        found: list[tuple[str, str, Any]] = []
        rf = self.response_format
        if isinstance(rf, JsonObjectFormat):
            found.append(("response_format", "json_object", None))
        elif isinstance(rf, JsonSchemaResponseFormat):
            found.append(("response_format.json_schema.schema", "json_schema", rf.json_schema.schema_))
        so = self.structured_outputs
        if so is not None:
            for key, kind, value in (
                ("json", "json_schema", so.json_),
                ("regex", "regex", so.regex),
                ("choice", "choice", so.choice),
                ("grammar", "grammar", so.grammar),
            ):
                if value is not None:
                    found.append((f"structured_outputs.{key}", kind, value))
            if so.json_object:  # false and null: not asked
                found.append(("structured_outputs.json_object", "json_object", None))
        for name, kind in (
            ("guided_json", "json_schema"),
            ("guided_regex", "regex"),
            ("guided_choice", "choice"),
            ("guided_grammar", "grammar"),
        ):
            if getattr(self, name) is not None:
                found.append((name, kind, getattr(self, name)))
        return found


def structured_spec(req: StructuredFields) -> StructuredSpec | None:
    """The request's one output constraint, or None; raises InvalidRequest naming the offending field (a
    second constraint, or a spec too large or too deep)."""
    found = req.constraints()
    if not found:
        return None
    if len(found) > 1:
        first, second = found[0][0], found[1][0]
        raise InvalidRequest(
            f"'{second}': only one structured output constraint per request, and '{first}' is already one",
            param=second,
        )
    param, kind, value = found[0]
    flexible = req.structured_outputs is not None and req.structured_outputs.flexible()
    return StructuredSpec.create(
        kind, value, whitespace_flexible=flexible and kind in ("json_schema", "json_object"), param=param
    )
