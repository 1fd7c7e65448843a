"""Tool-calling request fields of chat completions (OpenAI's `tools`, `tool_choice`, `parallel_tool_calls`),
the tool calls of history messages, and the response shapes of calls (whole and streamed).

Shapes are checked by pydantic, strictly, so `/openapi.json` states them. What spans fields (a named
`tool_choice` that is not in `tools`, `tool_choice` without `tools`, a `parameters` that is not a JSON schema)
is checked in `gateway.tool_calls.plan`, which also decides the grammar and the parser.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, with_config
from typing_extensions import TypedDict

from gateway.schema_rules import in_branch

MAX_TOOLS = 128  # OpenAI's limit
FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function names

_LOOSE = ConfigDict(strict=True, extra="ignore")  # OpenAI's objects: unknown keys ignored, as elsewhere


class FunctionDefinition(BaseModel):
    model_config = _LOOSE

    name: str = Field(pattern=FUNCTION_NAME, description="a-z, A-Z, 0-9, _ and -, at most 64 characters")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(
        None,
        description="a JSON schema of the arguments object (absent: no arguments)",
        # gateway.tool_calls.plan: a schema of anything but an object is a 400
        json_schema_extra=in_branch("object", properties={"type": {"const": "object"}}),
    )
    strict: bool | None = Field(None, description="accepted; forced calls always match `parameters`")


class ToolDefinition(BaseModel):
    model_config = _LOOSE

    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    model_config = _LOOSE
    name: str


class NamedToolChoice(BaseModel):
    model_config = _LOOSE

    type: Literal["function"]
    function: FunctionName


def _choice_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "mode-" if value in ("none", "auto", "required") else None
    # The tags carry a "-": error locations drop them (gateway.openai_errors.param_from_loc).
    return "function-" if isinstance(value, (dict, NamedToolChoice)) else None


ToolChoice = Annotated[
    Annotated[Literal["none", "auto", "required"], Tag("mode-")]
    | Annotated[NamedToolChoice, Tag("function-")],
    Discriminator(
        _choice_tag,
        custom_error_type="invalid_tool_choice",
        custom_error_message='must be "none", "auto", "required" or a function: {"type": "function", ...}',
    ),
]


class ToolFields(BaseModel):
    """The chat request fields that offer tools to the model."""

    model_config = _LOOSE

    tools: list[ToolDefinition] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = Field(
        None, description="default: 'auto' with tools, 'none' without (as OpenAI)"
    )
    parallel_tool_calls: bool | None = Field(
        None, description="default true: an answer may call several tools"
    )


class CalledFunction(BaseModel):
    model_config = _LOOSE

    name: str
    arguments: str = Field(description="the arguments as JSON text (as the API returned them)")


class HistoryToolCall(BaseModel):
    """A call in an earlier assistant message of `messages` (the API's own response shape)."""

    model_config = _LOOSE

    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


# ------------------------------------------------------------------ responses
_STRICT = ConfigDict(extra="forbid")


@with_config(_STRICT)
class FunctionCall(TypedDict):
    name: str
    arguments: str  # JSON text of the arguments object


@with_config(_STRICT)
class ToolCallOut(TypedDict):
    """`message.tool_calls[i]` of a non-streamed answer."""

    id: str
    type: Literal["function"]
    function: FunctionCall


@with_config(_STRICT)
class FunctionCallDelta(TypedDict):
    name: NotRequired[str]
    arguments: str


@with_config(_STRICT)
class ToolCallDelta(TypedDict):
    """`delta.tool_calls[i]` of a streamed chunk: `id`, `type` and `name` on a call's first delta."""

    index: int
    id: NotRequired[str]
    type: NotRequired[Literal["function"]]
    function: FunctionCallDelta
