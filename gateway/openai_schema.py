"""OpenAI request and response models (pydantic), as far as this server supports them.

Requests are validated strictly from the raw JSON body (`model_validate_json`): wrong types and out-of-range
values fail with the field's location, which `gateway.openai_errors` turns into OpenAI's `param`. Known
OpenAI fields the server does not implement are declared loosely and ignored; unknown fields are ignored too.
Responses are TypedDicts: `gateway.translate` and `gateway.openai_errors` build them (plain dicts at run
time, so a streamed token costs no model validation), and the same declarations give their JSON schema and
let tests validate what the server sent (`pydantic.TypeAdapter(ChatCompletionChunk)`, extra keys forbidden).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import (
    Annotated,
    Any,
    Literal,
    NotRequired,  # pydantic needs these on Python < 3.12
)

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict

from paddlellm.sampling import MAX_STREAM_INTERVAL

_MAX_STOP = 16  # OpenAI allows 4; a few more cost nothing


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


# The JSON schema (and so /openapi.json) must say what the validators below enforce, or generated clients and
# schema fuzzers disagree with the server: each validator that adds a rule adds it to the schema next to it.
def _in_branch(json_type: str, **rules: Any) -> Callable[[dict[str, Any]], None]:
    """json_schema_extra for an optional/union field: add `rules` to its `json_type` alternative."""

    def extra(schema: dict[str, Any]) -> None:
        for branch in schema.get("anyOf", [schema]):
            if branch.get("type") == json_type:
                branch.update(rules)

    return extra


def _integral(value: Any) -> Any:
    # JSON does not tell 3 from 3.0 (JSON Schema's "integer" admits both): an integral float is that int.
    return int(value) if isinstance(value, float) and value.is_integer() else value


# After the bounds in `Annotated[int, Field(...), INTEGRAL]`, so the bounds still reach the JSON schema.
INTEGRAL = BeforeValidator(_integral)  # strict otherwise: "3" and true stay errors

# metadata values arrive as strings or integers (see gateway.translate._metadata_int).
_COUNT = "^[0-9]+$"
ONE_TO_MAX_INTERVAL = "^0*([1-9][0-9]{0,2}|[1-3][0-9]{3}|40[0-8][0-9]|409[0-6])$"  # 1..4096 (tested)
_METADATA = {  # null: not given
    "min_tokens": {
        "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": _COUNT}, {"type": "null"}]
    },
    "max_streaming_response_tokens": {
        "anyOf": [
            {"type": "integer", "minimum": 1, "maximum": MAX_STREAM_INTERVAL},
            {"type": "string", "pattern": ONE_TO_MAX_INTERVAL},
            {"type": "null"},
        ]
    },
}


class StreamOptions(_Strict):
    include_usage: bool = False
    continuous_usage_stats: bool | None = None  # vLLM's extension, ignored


class TextPart(_Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
            "required": ["type", "text"],
        }
    )

    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _only_text(self) -> TextPart:
        if self.type != "text":
            raise ValueError(f"content part type '{self.type}' is not supported (text only)")
        if self.text is None:
            raise ValueError("a text content part needs 'text'")
        return self


class ChatMessage(_Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [  # _content_present
                {"required": ["content"], "properties": {"content": {"type": ["string", "array"]}}},
                {
                    "required": ["role", "tool_calls"],
                    "properties": {
                        "role": {"const": "assistant"},
                        "tool_calls": {"type": "array", "minItems": 1},
                    },
                },
            ]
        }
    )

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None  # clients echo it back in multi-turn histories; dropped

    @model_validator(mode="after")
    def _content_present(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(
                "'content' is required (it may be null only for assistant messages with tool_calls)"
            )
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)


class _SamplingFields(_Strict):
    """Fields shared by both endpoints."""

    model: str = "default"  # the served name or "default": the API document lists both
    max_tokens: Annotated[int, Field(ge=1), INTEGRAL] | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1), INTEGRAL] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(
        None,
        json_schema_extra=_in_branch("array", maxItems=_MAX_STOP, items={"type": "string", "minLength": 1}),
    )
    n: Annotated[int, Field(ge=1, le=1), INTEGRAL] = 1  # more than one choice is not supported
    metadata: dict[str, Any] | None = Field(  # min_tokens and friends (FastDeploy's convention)
        None, json_schema_extra=_in_branch("object", properties=_METADATA)
    )
    # Extensions vLLM and FastDeploy accept at the top level.
    min_tokens: Annotated[int, Field(ge=0), INTEGRAL] | None = None
    ignore_eos: bool | None = None
    stop_token_ids: list[Annotated[int, Field(ge=0), INTEGRAL]] | None = None  # SamplingParams' rule
    # FastDeploy's: at most this many tokens per streamed chunk (also accepted in `metadata`).
    max_streaming_response_tokens: Annotated[int, Field(ge=1, le=MAX_STREAM_INTERVAL), INTEGRAL] | None = None
    # Known OpenAI fields that are accepted and ignored.
    user: str | None = None
    logprobs: Any = None
    top_logprobs: Any = None
    logit_bias: Any = None
    service_tier: Any = None
    store: Any = None
    parallel_tool_calls: Any = None
    response_format: Any = None
    tools: Any = None
    tool_choice: Any = None
    reasoning_effort: Any = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list):
            if len(v) > _MAX_STOP:
                raise ValueError(f"at most {_MAX_STOP} stop sequences are supported")
            if any(not s for s in v):
                raise ValueError("stop sequences must not be empty")
        return v

    def stop_list(self) -> list[str]:
        if self.stop is None or self.stop == "":
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Annotated[int, Field(ge=1), INTEGRAL] | None = None

    def max_tokens_value(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] = Field(  # _one_prompt; an empty one is refused in gateway.translate
        json_schema_extra={
            "anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": 1},
            ]
        }
    )
    echo: Any = None
    best_of: Any = None
    suffix: Any = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and len(v) != 1:
            raise ValueError("exactly one prompt is supported (a string or a list of one string)")
        return v

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def max_tokens_value(self) -> int | None:
        return self.max_tokens


# Response shapes (documentation and test checks).


# ------------------------------------------------------------------ responses
FinishReason = Literal["stop", "length"]
_STRICT = ConfigDict(extra="forbid")


@with_config(_STRICT)
class PromptTokensDetails(TypedDict):
    cached_tokens: int  # prompt tokens whose KV came from the engine's prefix cache (not prefilled)


@with_config(_STRICT)
class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


@with_config(_STRICT)
class ChatDelta(TypedDict):
    role: NotRequired[Literal["assistant"]]  # on the first chunk only
    content: str
    reasoning_content: NotRequired[str]  # only when the chunk carries some
    token_ids: list[int]


@with_config(_STRICT)
class ChatChunkChoice(TypedDict):
    index: int
    delta: ChatDelta
    finish_reason: FinishReason | None
    arrival_time: float
    logprobs: None


@with_config(_STRICT)
class ChatCompletionChunk(TypedDict):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: NotRequired[Usage | None]  # with stream_options.include_usage: null but on the last chunk


@with_config(_STRICT)
class ChatResponseMessage(TypedDict):
    role: Literal["assistant"]
    content: str
    reasoning_content: str | None


@with_config(_STRICT)
class ChatChoice(TypedDict):
    index: int
    message: ChatResponseMessage
    finish_reason: FinishReason | None
    token_ids: list[int]
    arrival_time: float
    logprobs: None


@with_config(_STRICT)
class ChatCompletion(TypedDict):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


@with_config(_STRICT)
class CompletionChoice(TypedDict):
    index: int
    text: str
    finish_reason: FinishReason | None
    token_ids: list[int]
    arrival_time: float
    logprobs: None


@with_config(_STRICT)
class Completion(TypedDict):
    """Both the non-streamed response and each streamed chunk (OpenAI uses one object type for both)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: NotRequired[Usage | None]


@with_config(_STRICT)
class ErrorBody(TypedDict):
    message: str
    type: str
    param: str | None
    code: str | int | None


@with_config(_STRICT)
class ErrorResponse(TypedDict):
    error: ErrorBody


@with_config(_STRICT)
class ModelCard(TypedDict):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str
    max_model_len: int


@with_config(_STRICT)
class ModelList(TypedDict):
    object: Literal["list"]
    data: list[ModelCard]


@with_config(_STRICT)
class HealthStatus(TypedDict):
    status: Literal["ok"]
