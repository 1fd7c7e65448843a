"""Pure translation between OpenAI requests and the ensemble's tensors (no I/O, no clocks).

Requests become an `EnsembleRequest` (the three string tensors of `paddlellm.protocol`; one per choice, see
`choice_requests`). Responses arrive as `EnsembleResponse`s; `gateway.chunk_shaper` turns them into OpenAI
chunks and folds those into the non-streamed response.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any

from gateway.image_parts import RemoteImage, content_parts
from gateway.openai_schema import ChatCompletionRequest, CompletionRequest
from gateway.settings import GatewaySettings
from gateway.structured_fields import structured_spec
from gateway.tool_calls.plan import NO_TOOLS, plan_tools
from paddlellm.errors import InvalidRequest
from paddlellm.sampling import MAX_STREAM_INTERVAL, SPECS, SamplingParams, StructuredSpec

DEFAULT_MAX_TOKENS = 16
NON_STREAMING_INTERVAL = 16  # tokens per engine response for a non-streamed answer (see _stream_interval)


@dataclass(frozen=True)
class EnsembleRequest:
    """The ensemble's inputs: `messages` JSON for chat, `prompt` for completions; `sampling` JSON."""

    prompt: str
    messages: str
    sampling: str
    stops: tuple[str, ...] = ()
    n: int = 1  # choices: each its own engine request (`choice_requests`)
    tools: str = ""  # chat: JSON array of the tools the template describes ("" none; the `tools` input)
    tool_parser: str | None = None  # chat: the parser of tool calls in the answer (None: none parsed)
    tool_names: frozenset[str] = frozenset()  # the functions a parsed call may name
    sampling_params: SamplingParams | None = field(default=None, compare=False)  # what `sampling` says
    remote_images: tuple[RemoteImage, ...] = ()  # chat: allowed http(s) images to fetch before sending


def choice_requests(req: EnsembleRequest) -> list[EnsembleRequest]:
    """The engine requests of an n-choice request (see `choice_sampling`); just `req` for n = 1."""
    if req.n == 1 or req.sampling_params is None:
        return [req]
    out = []
    for i in range(req.n):
        sp = choice_sampling(req.sampling_params, i)
        out.append(dataclasses.replace(req, sampling=sp.to_json(), sampling_params=sp))
    return out


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
    logprobs: str = ""  # "" or the engine's logprobs JSON (gateway.logprobs)


# Fields mapped by hand in sampling_params: their OpenAI meaning is not the parameter's value alone.
_SPECIAL = {"max_tokens", "temperature", "top_p", "min_tokens", "logprobs", "prompt_logprobs"}
_ONE_TO_ONE = tuple((name, s.openai) for name, s in SPECS.items() if s.openai and name not in _SPECIAL)
MAX_SEED = 2**63  # seeds are signed 64-bit: choice i's seed (seed + i) wraps around


def sampling_params(
    req: ChatCompletionRequest | CompletionRequest,
    settings: GatewaySettings,
    tool_spec: StructuredSpec | None = None,
) -> SamplingParams:
    """OpenAI sampling fields -> SamplingParams; raises InvalidRequest naming the field. Fields whose OpenAI
    meaning is the parameter itself come from their declarations (`SPECS[name].openai`); the rest here.
    `tool_spec`: the output constraint of the request's tool choice (gateway.tool_calls.plan)."""
    # Both fields are checked, also the one max_completion_tokens overrides: the API document says so.
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(req, name, None)
        if value is not None and value >= settings.max_model_len:
            raise InvalidRequest(
                f"'{name}' is {value}, but this model's maximum context length is {settings.max_model_len} "
                "tokens (prompt and output together)",
                param=name,
            )
    _check_choices(req, settings)
    max_tokens = req.max_tokens_value()
    if max_tokens is None and isinstance(req, CompletionRequest):
        max_tokens = DEFAULT_MAX_TOKENS  # legacy completions default; chat runs to the end of the context
    values: dict[str, Any] = {name: getattr(req, field) for name, field in _ONE_TO_ONE}
    values |= {
        "temperature": req.temperature if req.temperature is not None else settings.default_temperature,
        "top_p": req.top_p if req.top_p is not None else settings.default_top_p,
        "min_tokens": _min_tokens(req),
        "stream_interval": _stream_interval(req, settings),
        "logprobs": _logprobs(req),
        "prompt_logprobs": _prompt_logprobs(req),
        "structured_outputs": _one_constraint(structured_spec(req), tool_spec),
    }
    sent = {k: v for k, v in values.items() if v is not None}
    sent["max_tokens"] = max_tokens  # None (chat's default) means "to the end of the context"
    return SamplingParams.from_dict(sent)


def _one_constraint(asked: StructuredSpec | None, tools: StructuredSpec | None) -> StructuredSpec | None:
    """Tools that constrain the output and another constraint cannot both hold: a 400 naming the other."""
    if asked is not None and tools is not None:
        raise InvalidRequest(
            f"'{asked.param}' cannot be combined with a 'tool_choice' that constrains the answer to calls",
            param=asked.param,
        )
    return asked or tools


def _check_choices(req: ChatCompletionRequest | CompletionRequest, settings: GatewaySettings) -> None:
    if req.n > settings.max_n:
        raise InvalidRequest(f"'n' must be between 1 and {settings.max_n}, got {req.n}", param="n")
    if req.best_of is not None and req.best_of != req.n:
        raise InvalidRequest(
            f"'best_of' is only supported equal to n ({req.n}), got {req.best_of}", param="best_of"
        )


def _logprobs(req: ChatCompletionRequest | CompletionRequest) -> int | None:
    """The engine's logprobs: chat's top_logprobs (0 without) when logprobs is true; completions' logprobs."""
    if isinstance(req, CompletionRequest):
        return req.logprobs
    if req.top_logprobs is not None and not req.logprobs:
        raise InvalidRequest("'top_logprobs' requires 'logprobs' to be true", param="top_logprobs")
    return (req.top_logprobs or 0) if req.logprobs else None


def _prompt_logprobs(req: ChatCompletionRequest | CompletionRequest) -> int | None:
    """vLLM's prompt_logprobs, and for completions' echo with logprobs the same count (the larger of both)."""
    asked = [req.prompt_logprobs]
    if isinstance(req, CompletionRequest) and req.echo:
        asked.append(req.logprobs)
    given = [n for n in asked if n is not None]
    return max(given) if given else None


def choice_sampling(sampling_params: SamplingParams, index: int) -> SamplingParams:
    """Choice `index` of an n-choice request: with a seed, seed + index (wrapping in signed 64 bits), so
    repeating the request repeats every choice; the prompt's logprobs only on the first (the gateway shows
    the first's for all), so the others read the prompt from the prefix cache."""
    if index == 0:
        return sampling_params
    seed = sampling_params.seed
    if seed is not None:
        seed = (seed + index + MAX_SEED) % (2 * MAX_SEED) - MAX_SEED
    return dataclasses.replace(sampling_params, seed=seed, prompt_logprobs=None)


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
    remote: list[RemoteImage] = []
    images = 0
    for i, m in enumerate(req.messages):
        # An assistant message with only tool calls keeps content null (templates test for it). A message
        # with images keeps its parts for the template; text-only content is one string, as ever.
        content: str | list[dict[str, Any]] | None = None
        if m.has_images():
            content = content_parts(m, i, settings, images, remote)
            images += sum(p["type"] == "image_url" for p in content)
        elif not (m.content is None and m.tool_calls):
            content = m.text()
        msg: dict[str, Any] = {"role": m.role, "content": content}
        for key in ("name", "tool_call_id"):
            if getattr(m, key) is not None:
                msg[key] = getattr(m, key)
        if m.tool_calls:
            msg["tool_calls"] = [call.model_dump() for call in m.tool_calls]
        messages.append(msg)
    plan = plan_tools(req, settings.tool_call_parser, settings.enable_auto_tool_choice)
    if plan.yields and structured_spec(req) is not None:
        plan = NO_TOOLS
    sp = sampling_params(req, settings, tool_spec=plan.spec)
    return EnsembleRequest(
        prompt="",
        messages=json.dumps(messages, ensure_ascii=False),
        sampling=sp.to_json(),
        stops=tuple(req.stop_list()),
        n=req.n,
        tools=plan.tools_json,
        tool_parser=plan.parser,
        tool_names=plan.names,
        sampling_params=sp,
        remote_images=tuple(remote),
    )


def completion_request(req: CompletionRequest, settings: GatewaySettings) -> EnsembleRequest:
    prompt = req.prompt_text()
    if not prompt:
        raise InvalidRequest("'prompt' must not be empty", param="prompt")
    sp = sampling_params(req, settings)
    return EnsembleRequest(
        prompt=prompt,
        messages="",
        sampling=sp.to_json(),
        stops=tuple(req.stop_list()),
        n=req.n,
        sampling_params=sp,
    )


def shown_logprobs(req: ChatCompletionRequest | CompletionRequest) -> dict[str, Any]:
    """ChunkShaper's options for what a request asked to see: logprobs, echo, prompt_logprobs."""
    if isinstance(req, ChatCompletionRequest):
        top = (req.top_logprobs or 0) if req.logprobs else None
        echo = None
    else:
        top, echo = req.logprobs, (req.prompt_text() if req.echo else None)
    return {"top_logprobs": top, "echo": echo, "prompt_logprobs": req.prompt_logprobs}
