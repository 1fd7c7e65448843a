"""A behavioural fake of `gateway.triton_client.TritonGrpcClient` serving the ensemble's contract.

It speaks the real client's types: `stream_infer` takes a `StreamRequest` of raw `Tensor`s and yields
`(InferResult, InferenceServerException | None)` built from real `ModelInferResponse` protos, with
`triton_final_response` set on an empty last response (as Triton does for a decoupled ensemble when
`triton_enable_empty_final_response` is requested). Like the real tokenizer and engine it validates
`sampling` with the strict SamplingParams parser and rejects prompts over `max_model_len` with the
protocol's error text. Reading after `cancel()` raises CancelledError, as grpc.aio's call does.

Logprobs as the engine sends them (`protocol.LOGPROBS` JSON) when the sampling asks: per token its bytes
(`token_bytes` overrides a token's, e.g. the halves of a character the detokenizer holds back), a logprob of
-0.1 x its position, rank 1, and the top alternatives (the token itself, then `alt<j>`); the prompt's
(words as tokens, the first null) on the first response with `prompt_logprobs`. `eos_id` ends a reply that
stops with that token (empty text and bytes), as the engine does. With `prefix_cache`, a request whose
prompt an earlier request already prefilled reports it all cached (and is not `prefilled`). With
`compile_structured`, a request's structured-output spec is "compiled" as the engine does before queueing it:
a regex Python's `re` cannot compile, or a JSON schema using `not`, is an InvalidRequest naming the spec's
`param` (the engine's real refusals come from llguidance; these two stand in for them).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import InferResult, service_pb2
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor, serialize_byte_tensor

from gateway.triton_client import StreamRequest
from paddlellm import protocol
from paddlellm.errors import EngineError, InvalidRequest
from paddlellm.protocol import ABORT_PARAMETER
from paddlellm.sampling import SamplingParams, StructuredSpec

# (token id, text delta): "" models a detokenizer holding back an incomplete UTF-8 character.
DEFAULT_REPLY: tuple[tuple[int, str], ...] = (
    (101, "Paris"),
    (102, " is"),
    (103, " the"),
    (104, " capital"),
    (105, " of"),
    (106, " France"),
    (107, "."),
    (108, " 你"),
    (109, "好"),
    (110, ""),
    (111, " 🌍"),
    (112, " Done"),
    (113, "!"),
)
# The bytes of each token where they are not its text: 110 and 111 split the emoji's bytes between them.
DEFAULT_TOKEN_BYTES: dict[int, bytes] = {110: b" \xf0\x9f", 111: b"\x8c\x8d"}

Script = Callable[[str, list[dict[str, Any]], SamplingParams], tuple[tuple[int, str], ...]]


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


@dataclass
class FakeStream:
    """What one stream_infer call saw and did; tests inspect these."""

    model: str = ""
    request_id: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    sent_tokens: int = 0
    cancelled: bool = False  # the gRPC call was cancelled
    completed: bool = False
    aborted: bool = False  # the engine was told to abort it and ended it early, as the engine does
    abort_requested: bool = False
    prefilled: bool = False  # computed its prompt (not found in the fake prefix cache)
    first_sent_at: int = -1  # the fake's event counter when its first response went out
    opened_at: int = -1  # ... when the request was read

    @property
    def ended_early(self) -> bool:
        """Stopped before its reply was complete: cancelled, or aborted in the engine."""
        return self.cancelled or self.aborted


class FakeTritonClient:
    def __init__(
        self,
        reply: tuple[tuple[int, str], ...] = DEFAULT_REPLY,
        max_model_len: int = 256,
        token_delay: float = 0.0,
        script: Script | None = None,
        token_bytes: dict[int, bytes] | None = None,
        eos_id: int | None = None,
        prefix_cache: bool = False,
        compile_structured: bool = False,
    ) -> None:
        self.compile_structured = compile_structured
        self.reply = reply
        self.token_bytes = DEFAULT_TOKEN_BYTES if token_bytes is None else token_bytes
        self.eos_id = eos_id
        self.prefix_cache = prefix_cache
        self._prefilled: set[tuple[str, str]] = set()
        self.events = 0
        self.script = script
        self.max_model_len = max_model_len
        self.token_delay = token_delay
        self.server_ready = True
        self.unready_models: set[str] = set()
        self.engine_alive = True
        self.down = False  # gRPC UNAVAILABLE everywhere
        self.fail_with: EngineError | None = None  # delivered instead of the first response
        self.fail_after: tuple[int, EngineError] | None = None  # delivered after n token responses
        self.fail_suffix = ""  # fail_with / fail_after only for request ids ending so (one choice of n: "-1")
        self.cached_tokens = 0  # what the engine reports it found in its prefix cache
        self.streams: list[FakeStream] = []
        self.aborted: list[str] = []  # request ids the gateway asked the engine to abort
        self.closed = False

    # --- health -------------------------------------------------------------------------------------
    async def is_server_ready(self, headers: Any = None, client_timeout: float | None = None) -> bool:
        if self.down:
            raise InferenceServerException("failed to connect to all addresses", "StatusCode.UNAVAILABLE")
        return self.server_ready

    async def is_model_ready(
        self,
        model_name: str,
        model_version: str = "",
        headers: Any = None,
        client_timeout: float | None = None,
    ) -> bool:
        if self.down:
            raise InferenceServerException("failed to connect to all addresses", "StatusCode.UNAVAILABLE")
        return model_name not in self.unready_models

    async def close(self) -> None:
        self.closed = True

    # --- streaming ----------------------------------------------------------------------------------
    def stream_infer(self, request: StreamRequest, stream_timeout: float | None = None) -> _Responses:
        record = FakeStream()
        self.streams.append(record)
        return _Responses(self, request, record)

    @property
    def active(self) -> int:
        return sum(1 for s in self.streams if not s.cancelled and not s.completed)

    def _generate(self, record: FakeStream) -> AsyncIterator[tuple[Any, Any]]:
        if record.model == "llm_engine" and record.parameters.get(ABORT_PARAMETER) is True:
            return self._abort(record)
        if record.model == "llm_engine":
            return self._probe(record)
        return self._ensemble(record)

    async def _abort(self, record: FakeStream) -> AsyncIterator[tuple[Any, Any]]:
        # Like the engine: abort the live request with this id (if any), answer with FINAL only.
        self.aborted.append(record.request_id)
        for live in self.streams:
            if live is not record and live.request_id == record.request_id and not live.completed:
                live.abort_requested = True
        yield _result({}, final=True), None

    async def _probe(self, record: FakeStream) -> AsyncIterator[tuple[Any, Any]]:
        if not self.engine_alive:
            yield None, _error("[EngineDead param=] a worker process died")
            return
        yield _result({protocol.TOKEN_IDS: np.array([1], np.int32), protocol.FINISH_REASON: "length"}), None
        yield _result({}, final=True), None

    async def _ensemble(self, record: FakeStream) -> AsyncIterator[tuple[Any, Any]]:
        prompt, messages_json = record.inputs[protocol.PROMPT], record.inputs[protocol.MESSAGES]
        try:
            sampling_params = SamplingParams.from_json(record.inputs[protocol.SAMPLING])
            if self.compile_structured and sampling_params.structured_outputs is not None:
                _compile(sampling_params.structured_outputs)
            messages = json.loads(messages_json) if messages_json else []
            n_prompt = _count_tokens(prompt, messages)
            # Like the engine: max_tokens None is the rest of the context.
            sampling_params = sampling_params.with_room(self.max_model_len - n_prompt)
            if n_prompt + sampling_params.max_tokens > self.max_model_len:
                raise InvalidRequest(
                    f"prompt has {n_prompt} tokens; with max_tokens={sampling_params.max_tokens} that "
                    f"exceeds max_model_len={self.max_model_len}",
                    param="messages" if messages else "prompt",
                )
        except EngineError as e:
            yield None, _error(protocol.format_error(e))
            return
        if self.fail_with is not None and record.request_id.endswith(self.fail_suffix):
            yield None, _error(protocol.format_error(self.fail_with))
            return
        pieces = self.script(prompt, messages, sampling_params) if self.script else self.reply
        if self.eos_id is not None and len(pieces) < sampling_params.max_tokens:
            pieces = (*pieces, (self.eos_id, ""))
        key = (prompt, messages_json)
        cached = self.cached_tokens
        if self.prefix_cache:
            record.prefilled = key not in self._prefilled or sampling_params.prompt_logprobs is not None
            cached = 0 if record.prefilled else n_prompt
        self.events += 1
        record.opened_at = self.events
        # Like the engine: a resumed request continues after the ids already sent (completion counts them).
        skip = len(record.inputs.get(protocol.RESUME_IDS, ()))
        for n, (tid, text) in enumerate(pieces[skip : sampling_params.max_tokens], start=skip + 1):
            if (
                self.fail_after is not None
                and n > self.fail_after[0]
                and record.request_id.endswith(self.fail_suffix)
            ):
                yield None, _error(protocol.format_error(self.fail_after[1]))
                return
            last = n == min(len(pieces), sampling_params.max_tokens)
            reason = ("length" if n == sampling_params.max_tokens else "stop") if last else ""
            if self.token_delay:
                await asyncio.sleep(self.token_delay)
            if record.abort_requested:
                record.aborted = True
                break
            record.sent_tokens = n
            if record.first_sent_at < 0:
                self.events += 1
                record.first_sent_at = self.events
                self._prefilled.add(key)
            yield (
                _result(
                    {
                        protocol.TEXT_OUTPUT: text,
                        protocol.TOKEN_IDS: np.array([tid], np.int32),
                        protocol.FINISH_REASON: reason,
                        protocol.PROMPT_TOKENS: np.array([n_prompt], np.int32),
                        protocol.COMPLETION_TOKENS: np.array([n], np.int32),
                        protocol.ENGINE_STATS: json.dumps({"steps": n}) if last else "",
                        protocol.CACHED_TOKENS: np.array([cached], np.int32),
                        protocol.LOGPROBS: self._logprobs(
                            sampling_params, tid, text, n, prompt, messages, n_prompt
                        ),
                    }
                ),
                None,
            )
        yield _result({}, final=True), None

    def _bytes(self, tid: int, text: str) -> bytes:
        return b"" if tid == self.eos_id else self.token_bytes.get(tid, text.encode("utf-8"))

    def _logprobs(
        self,
        sampling_params: SamplingParams,
        tid: int,
        text: str,
        n: int,
        prompt: str,
        messages: list[dict[str, Any]],
        n_prompt: int,
    ) -> str:
        if sampling_params.logprobs is None and sampling_params.prompt_logprobs is None:
            return ""
        out: dict[str, Any] = {"content": []}
        if sampling_params.logprobs is not None:
            out["content"] = [_entry(tid, self._bytes(tid, text), -0.1 * n, sampling_params.logprobs)]
        if sampling_params.prompt_logprobs is not None and n == 1:
            words = re.findall(r"\s*\S+", prompt) if not messages else [f" w{i}" for i in range(n_prompt)]
            out["prompt"] = [None] + [
                _entry(1000 + i, w.encode(), -1.0 - 0.01 * i, sampling_params.prompt_logprobs)
                for i, w in enumerate(words[1:], start=1)
            ]
        return json.dumps(out)


def _compile(spec: StructuredSpec) -> None:
    if spec.kind == "regex":
        try:
            re.compile(str(spec.value))
        except re.error as e:
            raise InvalidRequest(f"regex does not compile: {e}", param=spec.param) from None
    if spec.kind == "json_schema" and '"not":' in str(spec.value):
        raise InvalidRequest("unsupported JSON Schema keyword 'not'", param=spec.param)


def token_text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def _entry(tid: int, raw: bytes, logprob: float, top: int) -> dict[str, Any]:
    def one(i: int, r: bytes, lp: float) -> dict[str, Any]:
        return {"id": i, "token": token_text(r), "bytes": list(r), "logprob": lp}

    alternatives = [one(tid, raw, logprob)] + [
        one(900 + j, f"alt{j}".encode(), logprob - 1.0 - j) for j in range(1, top)
    ]
    return {**one(tid, raw, logprob), "rank": 1, "top_logprobs": alternatives[:top]}


class _Responses:
    """The stream_infer iterator: reads the request on first use, like the gRPC call."""

    def __init__(self, owner: FakeTritonClient, request: StreamRequest, record: FakeStream):
        self.owner, self.request, self.record = owner, request, record
        self.gen: AsyncIterator[tuple[Any, Any]] | None = None

    def __aiter__(self) -> _Responses:
        return self

    async def __anext__(self) -> tuple[Any, Any]:
        if self.record.cancelled:
            raise asyncio.CancelledError()
        if self.owner.down:
            raise _rpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")
        if self.gen is None:
            request = self.request
            self.record.model = request.model_name
            self.record.request_id = request.request_id
            self.record.parameters = dict(request.parameters)
            for tensor in request.inputs:
                if tensor.datatype == "BYTES":
                    self.record.inputs[tensor.name] = deserialize_bytes_tensor(tensor.raw)[0].decode()
                else:
                    self.record.inputs[tensor.name] = np.frombuffer(tensor.raw, dtype="<i4")
            self.gen = self.owner._generate(self.record)
        try:
            result, error = await self.gen.__anext__()
        except StopAsyncIteration:
            self.record.completed = True
            raise
        if error is not None or result.get_response().parameters["triton_final_response"].bool_param:
            self.record.completed = True  # Triton is done with this request
        return result, error

    def cancel(self) -> bool:
        if self.record.completed:
            return False
        self.record.cancelled = True
        return True


def _count_tokens(prompt: str, messages: list[dict[str, Any]]) -> int:
    if messages:
        return sum(3 + len(str(m.get("content", "")).split()) for m in messages) + 1
    return len(prompt.split())


def _error(message: str) -> InferenceServerException:
    # Triton prefixes errors from ensemble steps with where they happened.
    return InferenceServerException(msg=f"in ensemble 'ensemble', {message}")


def _result(outputs: dict[str, Any], final: bool = False) -> InferResult:
    resp = service_pb2.ModelInferResponse(model_name="ensemble", model_version="1")
    for name, value in outputs.items():
        if isinstance(value, str):
            arr = np.array([value.encode("utf-8")], dtype=np.object_)
            resp.outputs.add(name=name, datatype="BYTES", shape=[1])
            resp.raw_output_contents.append(serialize_byte_tensor(arr).item())
        else:
            resp.outputs.add(name=name, datatype="INT32", shape=list(value.shape))
            resp.raw_output_contents.append(value.tobytes())
    resp.parameters["triton_final_response"].bool_param = final
    return InferResult(resp)
