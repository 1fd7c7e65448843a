"""OpenAI request and response models (pydantic), as far as this server supports them.

Requests are validated strictly from the raw JSON body (`model_validate_json`): wrong types and out-of-range
values fail with the field's location, which `gateway.openai_errors` turns into OpenAI's `param`. Known
OpenAI fields the server does not implement are declared loosely and ignored; unknown fields are ignored too.
Responses are TypedDicts: `gateway.translate` and `gateway.openai_errors` build them (plain dicts at run
time, so a streamed token costs no model validation), and the same declarations give their JSON schema and
let tests validate what the server sent (`pydantic.TypeAdapter(ChatCompletionChunk)`, extra keys forbidden).
"""

from __future__ import annotations

from typing import (
    Any,
    Literal,
    NotRequired,  # pydantic needs these on Python < 3.12
)

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator, with_config
from typing_extensions import TypedDict

from paddlellm.sampling import MAX_STREAM_INTERVAL

_MAX_STOP = 16  # OpenAI allows 4; a few more cost nothing


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False
    continuous_usage_stats: bool | None = None  # vLLM's extension, ignored


class TextPart(_Strict):
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

    model: str = "default"
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1)  # more than one choice is not supported
    metadata: dict[str, Any] | None = None  # min_tokens and friends (FastDeploy's convention)
    # Extensions vLLM and FastDeploy accept at the top level.
    min_tokens: int | None = Field(None, ge=0)
    ignore_eos: bool | None = None
    stop_token_ids: list[int] | None = None
    # FastDeploy's: at most this many tokens per streamed chunk (also accepted in `metadata`).
    max_streaming_response_tokens: int | None = Field(None, ge=1, le=MAX_STREAM_INTERVAL)
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
    max_completion_tokens: int | None = Field(None, ge=1)

    def max_tokens_value(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_SamplingFields):
    prompt: str | list[str]
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
class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


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
