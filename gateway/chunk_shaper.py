"""OpenAI chunks from one choice's ensemble responses, and the non-streamed answer folded from them.

A `ChunkShaper` per choice turns `EnsembleResponse`s into OpenAI stream chunks; `assemble` folds those same
chunks into the non-streamed response, so streamed and non-streamed answers cannot drift apart.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from gateway.logprobs import (
    Entry,
    EntryAligner,
    chat_entry,
    completion_logprob,
    completion_top,
    vllm_prompt_logprobs,
    with_first,
)
from gateway.logprobs import parse as parse_logprobs
from gateway.openai_schema import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatLogprobs,
    ChatResponseMessage,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    FinishReason,
    PromptTokensDetails,
    Usage,
)
from gateway.reasoning import ReasoningSplitter
from gateway.stop_strings import StopStringMatcher
from gateway.tool_calls import make_parser
from gateway.tool_calls.parser_types import ToolCallParser
from gateway.tool_fields import FunctionCall, FunctionCallDelta, ToolCallDelta, ToolCallOut
from gateway.translate import EnsembleResponse
from paddlellm.errors import EngineError

Kind = Literal["chat", "completion"]
Chunk = ChatCompletionChunk | Completion  # one streamed chunk of either endpoint


@dataclass
class ChunkShaper:
    """Turns one choice's ensemble responses into OpenAI chunk dicts.

    Algorithm: each response's text goes through the stop filter (whole-text matching, holding back a tail
    that may start a stop string), then, for chat with reasoning markers, the reasoning splitter. Every
    response with tokens yields one chunk carrying its token ids and `arrival_time` (seconds since the
    request arrived, as the caller measures it). The chunk that ends the generation carries `finish_reason`:
    the engine's, or "stop" when a stop string matched (the caller then cancels the Triton stream).
    Logprob entries go out with the text they belong to (`gateway.logprobs.EntryAligner`); an echoed prompt
    (completions' `echo`) is the first chunk's text, ahead of the stop filter (stop strings apply to the
    generated text only).
    """

    kind: Kind
    request_id: str
    model: str
    created: int
    stops: tuple[str, ...] = ()
    include_usage: bool = False
    reasoning: tuple[str, str, bool] | None = None  # (start, end, starts_inside)
    index: int = 0  # the choice's index (n > 1)
    top_logprobs: int | None = None  # None: no logprobs shown; else alternatives per token
    echo: str | None = None  # completions' echo: the prompt text the answer starts with
    prompt_logprobs: int | None = None  # vLLM's prompt_logprobs: alternatives per prompt token
    prompt_entries: list[Entry | None] | None = None  # the prompt's entries (from the first choice)
    tool_parser: str | None = None  # chat with tools: the format of calls in the answer (None: not parsed)
    tool_names: frozenset[str] = frozenset()  # the functions a call may name
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    _stop: StopStringMatcher = field(init=False)
    _split: ReasoningSplitter | None = field(init=False)
    _aligner: EntryAligner | None = field(init=False)
    _tools: ToolCallParser | None = field(init=False)
    _calls: int = field(default=0, init=False)  # tool calls sent so far (the next one's index)
    _started: bool = field(default=False, init=False)
    _cut_short: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self._stop = StopStringMatcher(self.stops)
        self._split = ReasoningSplitter(*self.reasoning) if self.reasoning and self.kind == "chat" else None
        self._aligner = EntryAligner() if self.top_logprobs is not None else None
        use_tools = self.tool_parser is not None and self.kind == "chat"
        self._tools = make_parser(self.tool_parser, self.tool_names) if use_tools else None  # type: ignore[arg-type]

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
        empty = not resp.text and not resp.token_ids and not resp.finish_reason
        if empty and (self._started or self.echo is None):
            return []  # e.g. the empty final response
        aligner = self._aligner
        entries: list[Entry] = []
        if resp.logprobs:
            entries, prompt = parse_logprobs(resp.logprobs)
            if self.prompt_entries is None:
                self.prompt_entries = prompt
        head = self._echo_head() if not self._started else []
        if aligner is not None:
            if resp.finish_reason == "stop" and entries and not entries[-1]["bytes"]:
                entries = entries[:-1]  # the EOS / stop token that ended it: OpenAI leaves it out
            aligner.add(entries)
        text, stopped = self._stop.feed(resp.text)
        finish = None
        released: list[tuple[Entry, int]] = []
        if stopped:
            finish = "stop"
            self._cut_short = not resp.finish_reason
        elif resp.finish_reason:
            if resp.finish_reason not in ("stop", "length"):
                raise EngineError(f"the engine ended the request with '{resp.finish_reason}'")
            tail, stopped = self._stop.flush()  # the held-back tail may still complete a stop string
            text += tail
            finish = "stop" if stopped else resp.finish_reason
        if aligner is not None:
            released = aligner.release(text)
            if stopped:
                released += aligner.cut()
            elif finish is not None:
                released += aligner.finish(drop_uncovered_last=finish == "stop")
        return self._chunks(text, list(resp.token_ids), finish, arrival, head + released)

    def _echo_head(self) -> list[tuple[Entry, int]]:
        """Before the first chunk: the echoed prompt's entries (released with the prompt's text)."""
        if self.echo is None or self._aligner is None or self.prompt_entries is None:
            return []
        self._aligner.add([e for e in with_first(self.prompt_entries, self.echo) if e is not None])
        released = self._aligner.release(self.echo) + self._aligner.finish(drop_uncovered_last=False)
        self._aligner.sync()
        return released

    def check_finished(self) -> None:
        """After the final response: an error if no finish reason came."""
        if not self.finished:
            raise EngineError("the inference stream ended before the generation finished")

    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=self.cached_tokens),
        )

    def _chunks(
        self, text: str, ids: list[int], finish: str | None, arrival: float, entries: list[tuple[Entry, int]]
    ) -> list[Chunk]:
        first = not self._started
        self._started = True
        if self.kind == "completion":
            self._set_finish(finish)
            if first and self.echo is not None:
                text = self.echo + text
            choice = CompletionChoice(
                index=self.index,
                text=text,
                token_ids=ids,
                arrival_time=arrival,
                finish_reason=_finish_reason(finish),
                logprobs=self._completion_logprobs(entries),
            )
            if first and self.prompt_logprobs is not None and self.prompt_entries is not None:
                choice["prompt_logprobs"] = vllm_prompt_logprobs(self.prompt_entries, self.prompt_logprobs)
            return [self.envelope([choice])]
        reasoning, content = "", text
        if self._split is not None:
            reasoning, content = self._split.feed(text)
            if finish is not None:
                r, c = self._split.flush()
                reasoning, content = reasoning + r, content + c
        calls: list[ToolCallDelta] = []
        if self._tools is not None:
            content, calls = self._parse_calls(content, finish is not None)
            if finish == "stop" and self._calls:
                finish = "tool_calls"
        delta = ChatDelta(content=None if calls and not content else content, token_ids=ids)
        if first:
            delta = ChatDelta(role="assistant", **delta)
        if reasoning:
            delta["reasoning_content"] = reasoning
        if calls:
            delta["tool_calls"] = calls
        logprobs = None
        if self.top_logprobs is not None:
            logprobs = ChatLogprobs(content=[chat_entry(e, self.top_logprobs) for e, _ in entries])
        self._set_finish(finish)
        chat_choice = ChatChunkChoice(
            index=self.index,
            delta=delta,
            arrival_time=arrival,
            finish_reason=_finish_reason(finish),
            logprobs=logprobs,
        )
        chunk = cast(ChatCompletionChunk, self.envelope([chat_choice]))
        if first and self.index == 0 and self.prompt_logprobs is not None and self.prompt_entries is not None:
            chunk["prompt_logprobs"] = vllm_prompt_logprobs(self.prompt_entries, self.prompt_logprobs)
        return [chunk]

    def _set_finish(self, finish: str | None) -> None:
        if finish is not None:
            self.finish_reason = finish

    def _parse_calls(self, content: str, ending: bool) -> tuple[str, list[ToolCallDelta]]:
        """Content through the tool-call parser: (the text that is content, the calls completed). A call goes
        out whole in one delta (id, type, name and all its arguments), so one that turns out malformed can
        still become content instead."""
        assert self._tools is not None
        parsed = [self._tools.feed(content)] if content else []
        if ending:
            parsed.append(self._tools.finish())
        text, calls = "", []
        for p in parsed:
            text += p.content
            for call in p.calls:
                calls.append(
                    ToolCallDelta(
                        index=self._calls,
                        id=f"call_{uuid.uuid4().hex[:24]}",
                        type="function",
                        function=FunctionCallDelta(name=call.name, arguments=call.arguments),
                    )
                )
                self._calls += 1
        return text, calls

    def _completion_logprobs(self, entries: list[tuple[Entry, int]]) -> CompletionLogprobs | None:
        if self.top_logprobs is None:
            return None
        top = self.top_logprobs
        return CompletionLogprobs(
            tokens=[e["token"] for e, _ in entries],
            token_logprobs=[completion_logprob(e) for e, _ in entries],
            top_logprobs=[completion_top(e, top) for e, _ in entries],
            text_offset=[offset for _, offset in entries],
        )

    def envelope(self, choices: list[Any], usage: Usage | None = None) -> Chunk:
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


def total_usage(shapers: list[ChunkShaper]) -> Usage:
    """n choices: the prompt counted once (cached tokens: the first choice's), completions summed."""
    completion = sum(s.completion_tokens for s in shapers)
    prompt = shapers[0].prompt_tokens
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=shapers[0].cached_tokens),
    )


def usage_chunk(shapers: list[ChunkShaper]) -> Chunk:
    """The last chunk of a stream with stream_options.include_usage: no choices, the usage of all."""
    return shapers[0].envelope([], usage=total_usage(shapers))


def assemble(shapers: list[ChunkShaper], chunks: list[Chunk]) -> ChatCompletion | Completion:
    """The non-streamed response, folded from the chunks a stream would have carried (choices by index)."""
    head = shapers[0]
    by_index: dict[int, list[Any]] = {s.index: [] for s in shapers}
    prompt_logprobs = None
    for c in chunks:
        for choice in c["choices"]:
            by_index[choice["index"]].append(choice)
        if "prompt_logprobs" in c:
            prompt_logprobs = c["prompt_logprobs"]  # type: ignore[typeddict-item]
    usage = total_usage(shapers)
    if head.kind == "completion":
        completion = Completion(
            id=head.request_id,
            object="text_completion",
            created=head.created,
            model=head.model,
            choices=[_completion_choice(s, by_index[s.index]) for s in shapers],
            usage=usage,
        )
        return completion
    chat = ChatCompletion(
        id=head.request_id,
        object="chat.completion",
        created=head.created,
        model=head.model,
        choices=[_chat_choice(s, by_index[s.index]) for s in shapers],
        usage=usage,
    )
    if prompt_logprobs is not None:
        chat["prompt_logprobs"] = prompt_logprobs
    return chat


def _completion_choice(shaper: ChunkShaper, parts: list[Any]) -> CompletionChoice:
    logprobs = None
    if shaper.top_logprobs is not None:
        logprobs = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
        for p in parts:
            for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                logprobs[key] += p["logprobs"][key]  # type: ignore[literal-required]
    choice = CompletionChoice(
        index=shaper.index,
        text="".join(p["text"] for p in parts),
        finish_reason=_finish_reason(shaper.finish_reason),
        token_ids=[i for p in parts for i in p["token_ids"]],
        arrival_time=parts[-1]["arrival_time"] if parts else 0.0,
        logprobs=logprobs,
    )
    for p in parts:
        if "prompt_logprobs" in p:
            choice["prompt_logprobs"] = p["prompt_logprobs"]
    return choice


def _chat_choice(shaper: ChunkShaper, parts: list[Any]) -> ChatChoice:
    content = "".join(p["delta"].get("content") or "" for p in parts)
    reasoning = "".join(p["delta"].get("reasoning_content") or "" for p in parts)
    logprobs = None
    if shaper.top_logprobs is not None:
        logprobs = ChatLogprobs(content=[e for p in parts for e in p["logprobs"]["content"]])
    message = ChatResponseMessage(role="assistant", content=content, reasoning_content=reasoning or None)
    calls = _whole_calls([d for p in parts for d in p["delta"].get("tool_calls", ())])
    if calls:
        message["tool_calls"] = calls
        message["content"] = content or None  # OpenAI: null when the answer only calls tools
    return ChatChoice(
        index=shaper.index,
        message=message,
        finish_reason=_finish_reason(shaper.finish_reason),
        token_ids=[i for p in parts for i in p["delta"]["token_ids"]],
        arrival_time=parts[-1]["arrival_time"] if parts else 0.0,
        logprobs=logprobs,
    )


def _whole_calls(deltas: list[ToolCallDelta]) -> list[ToolCallOut]:
    """Streamed call deltas folded as a client folds them: a delta with an `id` opens call `index`, later
    deltas of that index append to its arguments."""
    calls: dict[int, ToolCallOut] = {}
    for d in deltas:
        fn = d["function"]
        if "id" in d:
            calls[d["index"]] = ToolCallOut(
                id=d["id"], type="function", function=FunctionCall(name=fn.get("name", ""), arguments="")
            )
        calls[d["index"]]["function"]["arguments"] += fn.get("arguments", "")
    return [calls[i] for i in sorted(calls)]
