"""Pure translation between OpenAI requests/responses and the ensemble's tensors (no I/O, no clocks).

Requests become an `EnsembleRequest` (the three string tensors of `paddlellm.protocol`). Responses arrive as
`EnsembleResponse`s; a `ChunkShaper` turns them into OpenAI stream chunks, and `assemble` folds those same
chunks into the non-streamed response, so streamed and non-streamed answers cannot drift apart.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.openai_schema import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatResponseMessage,
    Completion,
    CompletionChoice,
    CompletionRequest,
    FinishReason,
    PromptTokensDetails,
    Usage,
)
from gateway.reasoning import ReasoningSplitter
from gateway.settings import GatewaySettings
from gateway.stop_strings import StopStringMatcher
from paddlellm.errors import EngineError, InvalidRequest
from paddlellm.sampling import MAX_STREAM_INTERVAL, SamplingParams

Kind = Literal["chat", "completion"]
DEFAULT_MAX_TOKENS = 16
NON_STREAMING_INTERVAL = 16  # tokens per engine response for a non-streamed answer (see _stream_interval)

Chunk = ChatCompletionChunk | Completion  # one streamed chunk of either endpoint


@dataclass(frozen=True)
class EnsembleRequest:
    """The ensemble's inputs: `messages` JSON for chat, `prompt` for completions; `sampling` JSON."""

    prompt: str
    messages: str
    sampling: str
    stops: tuple[str, ...] = ()


@dataclass(frozen=True)
class EnsembleResponse:
    """One ensemble response; an empty final one (only `final` set) closes the stream."""

    text: str = ""
    token_ids: tuple[int, ...] = ()
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    engine_stats: str = ""
    cached_tokens: int = 0  # prompt tokens the engine found in its prefix cache
    final: bool = False


def sampling_params(
    req: ChatCompletionRequest | CompletionRequest, settings: GatewaySettings
) -> SamplingParams:
    """OpenAI sampling fields -> SamplingParams; raises InvalidRequest naming the field."""
    # Both fields are checked, also the one max_completion_tokens overrides: the API document says so.
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(req, name, None)
        if value is not None and value >= settings.max_model_len:
            raise InvalidRequest(
                f"'{name}' is {value}, but this model's maximum context length is {settings.max_model_len} "
                "tokens (prompt and output together)",
                param=name,
            )
    max_tokens = req.max_tokens_value()
    if max_tokens is None and isinstance(req, CompletionRequest):
        max_tokens = DEFAULT_MAX_TOKENS  # legacy completions default; chat runs to the end of the context
    values: dict[str, Any] = {
        "max_tokens": max_tokens,
        "temperature": req.temperature if req.temperature is not None else settings.default_temperature,
        "top_p": req.top_p if req.top_p is not None else settings.default_top_p,
        "frequency_penalty": req.frequency_penalty,
        "presence_penalty": req.presence_penalty,
        "seed": req.seed,
        "min_tokens": _min_tokens(req),
        "ignore_eos": req.ignore_eos,
        "stop_token_ids": req.stop_token_ids,
        "stream_interval": _stream_interval(req, settings),
    }
    sent = {k: v for k, v in values.items() if v is not None}
    sent["max_tokens"] = max_tokens  # None (chat's default) means "to the end of the context"
    return SamplingParams.from_dict(sent)


def _min_tokens(req: ChatCompletionRequest | CompletionRequest) -> int | None:
    in_metadata = _metadata_int(req, "min_tokens")  # checked even when the top-level field wins
    return req.min_tokens if req.min_tokens is not None else in_metadata


def _stream_interval(req: ChatCompletionRequest | CompletionRequest, settings: GatewaySettings) -> int:
    """Tokens per response after the first: the request's `max_streaming_response_tokens` (FastDeploy's field,
    top level or in metadata), else --stream-interval. A non-streamed answer is only read whole, so it takes
    at least NON_STREAMING_INTERVAL: its stop strings are then seen up to that many tokens late, and the
    tokens past the match are computed and dropped."""
    in_metadata = _metadata_int(req, "max_streaming_response_tokens")  # checked even when unused
    if in_metadata is not None and not 1 <= in_metadata <= MAX_STREAM_INTERVAL:
        raise InvalidRequest(
            f"'metadata.max_streaming_response_tokens' must be between 1 and {MAX_STREAM_INTERVAL}, "
            f"got {in_metadata}",
            param="metadata.max_streaming_response_tokens",
        )
    n = req.max_streaming_response_tokens  # range-checked by the schema
    if n is None:
        n = in_metadata
    if n is None:
        n = settings.stream_interval
    return n if req.stream else max(n, NON_STREAMING_INTERVAL)


def _metadata_int(req: ChatCompletionRequest | CompletionRequest, name: str) -> int | None:
    raw = (req.metadata or {}).get(name)
    if raw is None:
        return None
    # OpenAI types metadata values as strings; accept "3", 3 and 3.0 (ASCII digits only, as int() wants).
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, (int, str)) or not re.fullmatch("[0-9]+", str(raw)):
        raise InvalidRequest(
            f"'metadata.{name}' must be a non-negative integer, got {raw!r}", param=f"metadata.{name}"
        )
    return int(raw)


def chat_request(req: ChatCompletionRequest, settings: GatewaySettings) -> EnsembleRequest:
    if len(req.messages) > settings.max_messages:
        # Checked here, before Triton's tokenizer renders the template over all of them.
        raise InvalidRequest(
            f"'messages' has {len(req.messages)} messages; this server accepts at most "
            f"{settings.max_messages}",
            param="messages",
        )
    messages = []
    for m in req.messages:
        msg: dict[str, Any] = {"role": m.role, "content": m.text()}
        for key in ("name", "tool_calls", "tool_call_id"):
            if getattr(m, key) is not None:
                msg[key] = getattr(m, key)
        messages.append(msg)
    return EnsembleRequest(
        prompt="",
        messages=json.dumps(messages, ensure_ascii=False),
        sampling=sampling_params(req, settings).to_json(),
        stops=tuple(req.stop_list()),
    )


def completion_request(req: CompletionRequest, settings: GatewaySettings) -> EnsembleRequest:
    prompt = req.prompt_text()
    if not prompt:
        raise InvalidRequest("'prompt' must not be empty", param="prompt")
    return EnsembleRequest(
        prompt=prompt,
        messages="",
        sampling=sampling_params(req, settings).to_json(),
        stops=tuple(req.stop_list()),
    )


@dataclass
class ChunkShaper:
    """Turns one request's ensemble responses into OpenAI chunk dicts.

    Algorithm: each response's text goes through the stop filter (whole-text matching, holding back a tail
    that may start a stop string), then, for chat with reasoning markers, the reasoning splitter. Every
    response with tokens yields one chunk carrying its token ids and `arrival_time` (seconds since the
    request arrived, as the caller measures it). The chunk that ends the generation carries `finish_reason`:
    the engine's, or "stop" when a stop string matched (the caller then cancels the Triton stream).
    """

    kind: Kind
    request_id: str
    model: str
    created: int
    stops: tuple[str, ...] = ()
    include_usage: bool = False
    reasoning: tuple[str, str, bool] | None = None  # (start, end, starts_inside)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    _stop: StopStringMatcher = field(init=False)
    _split: ReasoningSplitter | None = field(init=False)
    _started: bool = field(default=False, init=False)
    _cut_short: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self._stop = StopStringMatcher(self.stops)
        self._split = ReasoningSplitter(*self.reasoning) if self.reasoning and self.kind == "chat" else None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def stopped_by_string(self) -> bool:
        """A stop string ended the generation before the engine did: the caller cancels the stream."""
        return self._cut_short

    def feed(self, resp: EnsembleResponse, arrival: float) -> list[Chunk]:
        if self.finished:
            return []
        if resp.prompt_tokens:
            self.prompt_tokens = resp.prompt_tokens
            self.cached_tokens = resp.cached_tokens
        if resp.token_ids or resp.completion_tokens:
            self.completion_tokens = max(self.completion_tokens, resp.completion_tokens)
        if not resp.text and not resp.token_ids and not resp.finish_reason:
            return []  # e.g. the empty final response
        text, stopped = self._stop.feed(resp.text)
        finish = None
        if stopped:
            finish = "stop"
            self._cut_short = not resp.finish_reason
        elif resp.finish_reason:
            if resp.finish_reason not in ("stop", "length"):
                raise EngineError(f"the engine ended the request with '{resp.finish_reason}'")
            tail, stopped = self._stop.flush()  # the held-back tail may still complete a stop string
            text += tail
            finish = "stop" if stopped else resp.finish_reason
        return self._chunks(text, list(resp.token_ids), finish, arrival)

    def end_of_stream(self, arrival: float) -> list[Chunk]:
        """After the final response: the usage chunk when asked for; an error if no finish reason came."""
        if not self.finished:
            raise EngineError("the inference stream ended before the generation finished")
        if self.include_usage:
            return [self._envelope([], usage=self.usage())]
        return []

    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=self.cached_tokens),
        )

    def _chunks(self, text: str, ids: list[int], finish: str | None, arrival: float) -> list[Chunk]:
        if finish is not None:
            self.finish_reason = finish
        reason = _finish_reason(finish)
        if self.kind == "completion":
            choice = CompletionChoice(
                index=0, text=text, token_ids=ids, arrival_time=arrival, finish_reason=reason, logprobs=None
            )
            return [self._envelope([choice])]
        reasoning, content = "", text
        if self._split is not None:
            reasoning, content = self._split.feed(text)
            if finish is not None:
                r, c = self._split.flush()
                reasoning, content = reasoning + r, content + c
        delta = ChatDelta(content=content, token_ids=ids)
        if not self._started:
            delta = ChatDelta(role="assistant", **delta)
            self._started = True
        if reasoning:
            delta["reasoning_content"] = reasoning
        chat_choice = ChatChunkChoice(
            index=0, delta=delta, arrival_time=arrival, finish_reason=reason, logprobs=None
        )
        return [self._envelope([chat_choice])]

    def _envelope(self, choices: list[Any], usage: Usage | None = None) -> Chunk:
        chunk: Chunk
        if self.kind == "chat":
            chunk = ChatCompletionChunk(
                id=self.request_id,
                object="chat.completion.chunk",
                created=self.created,
                model=self.model,
                choices=choices,
            )
        else:
            chunk = Completion(
                id=self.request_id,
                object="text_completion",
                created=self.created,
                model=self.model,
                choices=choices,
            )
        if self.include_usage:
            chunk["usage"] = usage  # OpenAI: null on every chunk but the last
        return chunk


def _finish_reason(finish: str | None) -> FinishReason | None:
    return finish  # type: ignore[return-value]  # feed() admits only "stop" and "length"


def assemble(shaper: ChunkShaper, chunks: list[Chunk]) -> ChatCompletion | Completion:
    """The non-streamed response, folded from the chunks a stream would have carried."""
    choices: list[Any] = [c["choices"][0] for c in chunks if c["choices"]]
    ids = [
        i
        for c in choices
        for i in (c["token_ids"] if shaper.kind == "completion" else c["delta"]["token_ids"])
    ]
    arrival = choices[-1]["arrival_time"] if choices else 0.0
    reason = _finish_reason(shaper.finish_reason)
    if shaper.kind == "completion":
        text = "".join(c["text"] for c in choices)
        choice = CompletionChoice(
            index=0, text=text, finish_reason=reason, token_ids=ids, arrival_time=arrival, logprobs=None
        )
        return Completion(
            id=shaper.request_id,
            object="text_completion",
            created=shaper.created,
            model=shaper.model,
            choices=[choice],
            usage=shaper.usage(),
        )
    content = "".join(c["delta"].get("content") or "" for c in choices)
    reasoning = "".join(c["delta"].get("reasoning_content") or "" for c in choices)
    message = ChatResponseMessage(role="assistant", content=content, reasoning_content=reasoning or None)
    chat_choice = ChatChoice(
        index=0, message=message, finish_reason=reason, token_ids=ids, arrival_time=arrival, logprobs=None
    )
    return ChatCompletion(
        id=shaper.request_id,
        object="chat.completion",
        created=shaper.created,
        model=shaper.model,
        choices=[chat_choice],
        usage=shaper.usage(),
    )
