"""OpenAI request and response models (pydantic), as far as this server supports them.

Requests are validated strictly from the raw JSON body (`model_validate_json`): wrong types and out-of-range
values fail with the field's location, which `gateway.openai_errors` turns into OpenAI's `param`. The bounds
of the sampling fields come from their declarations (`paddlellm.sampling.SPECS`, `spec_bounds`). Known
OpenAI fields the server does not implement are declared loosely and ignored; unknown fields are ignored too.
Responses are TypedDicts: `gateway.translate` and `gateway.openai_errors` build them (plain dicts at run
time, so a streamed token costs no model validation), and the same declarations give their JSON schema and
let tests validate what the server sent (`pydantic.TypeAdapter(ChatCompletionChunk)`, extra keys forbidden).
"""

from __future__ import annotations

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
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict

from gateway.schema_rules import in_branch
from gateway.structured_fields import StructuredFields
from gateway.tool_fields import HistoryToolCall, ToolCallDelta, ToolCallOut, ToolFields
from paddlellm.sampling import MAX_LOGPROBS, MAX_STREAM_INTERVAL, SPECS

_MAX_STOP = 16  # OpenAI allows 4; a few more cost nothing


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


def _integral(value: Any) -> Any:
    # JSON does not tell 3 from 3.0 (JSON Schema's "integer" admits both): an integral float is that int.
    return int(value) if isinstance(value, float) and value.is_integer() else value


# After the bounds in `Annotated[int, Field(...), INTEGRAL]`, so the bounds still reach the JSON schema.
INTEGRAL = BeforeValidator(_integral)  # strict otherwise: "3" and true stay errors


def spec_bounds(name: str) -> Any:
    """The pydantic bounds of the sampling parameter `name` (ge/gt/le/lt), from its ParamSpec."""
    spec = SPECS[name]
    num = int if spec.kind in ("int", "ids") else float
    bounds: dict[str, Any] = {}
    if spec.lo is not None:
        bounds["gt" if spec.lo_open else "ge"] = num(spec.lo)
    if spec.hi is not None:
        bounds["lt" if spec.hi_open else "le"] = num(spec.hi)
    return Field(**bounds)


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


class ImageUrl(_Strict):
    url: str | None = None  # required (the schema says so); checked after --enable-mm (image_parts.py)
    # The image is preprocessed at the checkpoint's own resolution bounds, which is what "high" asks for;
    # "low" (a cheaper, smaller image) is not served, so it is refused rather than ignored.
    detail: Literal["auto", "high"] | None = None


# The two part shapes; gateway/openapi_doc.py keeps only TEXT_PART_SCHEMA when the server takes no images
# (--enable-mm off) and narrows the image URL to what the settings accept.
TEXT_PART_SCHEMA = {
    "type": "object",
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
    "required": ["type", "text"],
}
IMAGE_PART_SCHEMA = {
    "type": "object",
    "properties": {
        "type": {"const": "image_url"},
        "image_url": {
            "type": "object",
            "properties": {
                "url": {"type": "string"},
                "detail": {"anyOf": [{"enum": ["auto", "high"]}, {"type": "null"}]},
            },
            "required": ["url"],
        },
    },
    "required": ["type", "image_url"],
}


def _content_part_schema(schema: dict[str, Any]) -> None:
    schema.clear()
    schema["anyOf"] = [TEXT_PART_SCHEMA, IMAGE_PART_SCHEMA]


class ContentPart(_Strict):
    """A chat content part: text, or an image (OpenAI's image_url; refused unless --enable-mm, checked
    further in gateway/image_parts.py)."""

    model_config = ConfigDict(json_schema_extra=_content_part_schema)

    type: str
    text: str | None = None
    image_url: ImageUrl | None = None

    @model_validator(mode="after")
    def _shape(self) -> ContentPart:
        if self.type == "text":
            if self.text is None:
                raise ValueError("a text content part needs 'text'")
        elif self.type == "image_url":
            if self.image_url is None:
                raise ValueError("an image_url content part needs 'image_url' ({\"url\": ...})")
        else:
            raise ValueError(f"content part type '{self.type}' is not supported (text, image_url)")
        return self


class ChatMessage(_Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [  # _content_present
                {
                    "anyOf": [
                        {"required": ["content"], "properties": {"content": {"type": ["string", "array"]}}},
                        {
                            "required": ["role", "tool_calls"],
                            "properties": {
                                "role": {"const": "assistant"},
                                "tool_calls": {"type": "array", "minItems": 1},
                            },
                        },
                    ]
                },
                {  # tool_calls only on assistant messages
                    "anyOf": [
                        {"properties": {"role": {"const": "assistant"}}},
                        {
                            "properties": {
                                "tool_calls": {"anyOf": [{"type": "null"}, {"type": "array", "maxItems": 0}]}
                            }
                        },
                    ]
                },
                {  # a tool message names its call
                    "anyOf": [
                        {"properties": {"role": {"enum": ["system", "developer", "user", "assistant"]}}},
                        {
                            "required": ["tool_call_id"],
                            "properties": {"tool_call_id": {"type": "string", "minLength": 1}},
                        },
                    ]
                },
            ]
        }
    )

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[HistoryToolCall] | None = None  # assistant messages: the calls it made
    tool_call_id: str | None = None  # tool messages: the call this is the result of
    reasoning_content: str | None = None  # clients echo it back in multi-turn histories; dropped

    @model_validator(mode="after")
    def _content_present(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(
                "'content' is required (it may be null only for assistant messages with tool_calls)"
            )
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry 'tool_calls'")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs 'tool_call_id' (the id of the call it answers)")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)

    def has_images(self) -> bool:
        return isinstance(self.content, list) and any(p.type == "image_url" for p in self.content)


def _declared_field(name: str) -> tuple[Any, None]:
    """(annotation, default) of the request field of sampling parameter `name`: type and bounds from its
    ParamSpec; null or absent means "not given"."""
    spec = SPECS[name]
    if spec.kind == "bool":
        return (bool | None, None)
    if spec.kind == "float":
        return (Annotated[float, spec_bounds(name)] | None, None)
    if spec.kind == "int":
        return (Annotated[int, spec_bounds(name), INTEGRAL] | None, None)
    return (list[Annotated[int, spec_bounds(name), INTEGRAL]] | None, None)


# Every sampling parameter with an OpenAI name is a request field of both endpoints, generated from its
# declaration: adding a sampling parameter adds its request field (docs/architecture.md).
_DeclaredSamplingFields: type[_Strict] = create_model(  # type: ignore[call-overload]
    "_DeclaredSamplingFields",
    __base__=_Strict,
    **{spec.openai: _declared_field(name) for name, spec in SPECS.items() if spec.openai},
)


class _SamplingFields(_DeclaredSamplingFields, StructuredFields):  # type: ignore[misc,valid-type]
    """Fields shared by both endpoints (the declared sampling parameters come from the first base, the
    structured-output fields from the second: gateway/structured_fields.py)."""

    model: str = "default"  # the served name or "default": the API document lists both
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(
        None,
        json_schema_extra=in_branch("array", maxItems=_MAX_STOP, items={"type": "string", "minLength": 1}),
    )
    # Choices: each its own engine request; the upper bound is the server's --max-n (gateway.translate).
    n: Annotated[int, Field(ge=1), INTEGRAL] = 1
    # vLLM removed best_of: accepted only when it equals n (gateway.translate), else a 400 naming it.
    best_of: Annotated[int, Field(ge=1), INTEGRAL] | None = None
    metadata: dict[str, Any] | None = Field(  # min_tokens and friends (FastDeploy's convention)
        None, json_schema_extra=in_branch("object", properties=_METADATA)
    )
    # FastDeploy's: at most this many tokens per streamed chunk (also accepted in `metadata`).
    max_streaming_response_tokens: Annotated[int, Field(ge=1, le=MAX_STREAM_INTERVAL), INTEGRAL] | None = None
    # OpenAI fields clients send by default that change nothing here: accepted.
    user: str | None = None
    service_tier: Any = None
    store: Any = None
    reasoning_effort: Any = None
    # OpenAI fields not honoured yet: accepted only at the value that changes nothing, else a 400 naming the
    # field (_not_honoured), never silently ignored.
    logit_bias: dict[str, Any] | None = Field(None, json_schema_extra=in_branch("object", maxProperties=0))

    @field_validator("logit_bias")
    @classmethod
    def _not_honoured(cls, v: Any, info: ValidationInfo) -> Any:
        if v not in (None, {}):
            raise ValueError(f"'{info.field_name}' is not supported yet (only {{}} is accepted)")
        return v

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


class ChatCompletionRequest(_SamplingFields, ToolFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Annotated[int, spec_bounds("max_tokens"), INTEGRAL] | None = None
    logprobs: bool | None = None
    # Requires logprobs: true (gateway.translate; a 400 naming top_logprobs otherwise).
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS), INTEGRAL] | None = None
    # Completions only: on chat, true is a 400 naming it.
    echo: bool | None = Field(None, json_schema_extra={"anyOf": [{"const": False}, {"type": "null"}]})

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: bool | None) -> bool | None:
        if v:
            raise ValueError("'echo' is supported on completions only")
        return v

    def max_tokens_value(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_SamplingFields):
    # Completions have no tools (nor do OpenAI's): only values that change nothing, else a 400 naming them.
    tools: list[Any] | None = Field(None, json_schema_extra=in_branch("array", maxItems=0))
    tool_choice: Any = Field(
        None, json_schema_extra={"anyOf": [{"enum": ["none", "auto"]}, {"type": "null"}]}
    )
    parallel_tool_calls: bool | None = None

    @field_validator("tools", "tool_choice")
    @classmethod
    def _no_tools(cls, v: Any, info: ValidationInfo) -> Any:
        if v not in ((None, []) if info.field_name == "tools" else (None, "none", "auto")):
            raise ValueError(f"'{info.field_name}' is supported on chat completions only")
        return v

    prompt: str | list[str] = Field(  # _one_prompt; an empty one is refused in gateway.translate
        json_schema_extra={
            "anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": 1},
            ]
        }
    )
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS), INTEGRAL] | None = None
    echo: bool | None = None  # the answer starts with the prompt (with logprobs: the prompt's too)
    suffix: str | None = Field(  # insertion is not supported: only an empty suffix is accepted
        None, json_schema_extra=in_branch("string", maxLength=0)
    )

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v: str | None) -> str | None:
        if v:
            raise ValueError("'suffix' is not supported")
        return v

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
FinishReason = Literal["stop", "length", "tool_calls"]
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
class TopLogprob(TypedDict):
    token: str  # the token's text; "bytes:\\xe2\\x80" style when its bytes alone are not UTF-8
    logprob: float  # log-softmax of the model's raw logits
    bytes: list[int]  # the token's UTF-8 bytes (the part inside the content, when a stop string cut it)


@with_config(_STRICT)
class TokenLogprob(TypedDict):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]  # the top_logprobs most likely tokens, most likely first


@with_config(_STRICT)
class ChatLogprobs(TypedDict):
    """Chat `choices[i].logprobs` (null when not asked): one entry per token of the content."""

    content: list[TokenLogprob]


@with_config(_STRICT)
class CompletionLogprobs(TypedDict):
    """Completions `choices[i].logprobs` (null when not asked); with `echo`, the prompt's tokens come first
    (the very first with null logprob and top_logprobs, as OpenAI)."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]  # the top `logprobs` tokens and the chosen one
    text_offset: list[int]  # each token's character offset in the choice's text (echoed prompt included)


@with_config(_STRICT)
class PromptLogprob(TypedDict):
    logprob: float
    rank: int | None  # 1 = the most likely token; null when the engine did not say
    decoded_token: str


# vLLM's `prompt_logprobs`: per prompt token (the first null) {token id: its logprob and the top ones'}.
PromptLogprobs = list[dict[str, PromptLogprob] | None]


@with_config(_STRICT)
class ChatDelta(TypedDict):
    role: NotRequired[Literal["assistant"]]  # on the first chunk only
    content: str | None  # null on a chunk that carries only tool calls
    tool_calls: NotRequired[list[ToolCallDelta]]  # calls completed in this chunk
    reasoning_content: NotRequired[str]  # only when the chunk carries some
    token_ids: list[int]


@with_config(_STRICT)
class ChatChunkChoice(TypedDict):
    index: int
    delta: ChatDelta
    finish_reason: FinishReason | None
    arrival_time: float
    logprobs: ChatLogprobs | None  # the entries of this chunk's tokens, when asked


@with_config(_STRICT)
class ChatCompletionChunk(TypedDict):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    prompt_logprobs: NotRequired[PromptLogprobs]  # vLLM's prompt_logprobs: on the first chunk only
    usage: NotRequired[Usage | None]  # with stream_options.include_usage: null but on the last chunk


@with_config(_STRICT)
class ChatResponseMessage(TypedDict):
    role: Literal["assistant"]
    content: str | None  # null when the answer only calls tools
    reasoning_content: str | None
    tool_calls: NotRequired[list[ToolCallOut]]  # when the answer calls tools


@with_config(_STRICT)
class ChatChoice(TypedDict):
    index: int
    message: ChatResponseMessage
    finish_reason: FinishReason | None
    token_ids: list[int]
    arrival_time: float
    logprobs: ChatLogprobs | None


@with_config(_STRICT)
class ChatCompletion(TypedDict):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    prompt_logprobs: NotRequired[PromptLogprobs]  # vLLM's prompt_logprobs, when asked
    usage: Usage


@with_config(_STRICT)
class CompletionChoice(TypedDict):
    index: int
    text: str
    finish_reason: FinishReason | None
    token_ids: list[int]  # generated ids (an echoed prompt's are not included)
    arrival_time: float
    logprobs: CompletionLogprobs | None
    prompt_logprobs: NotRequired[PromptLogprobs]  # vLLM's prompt_logprobs: on the first chunk only


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
