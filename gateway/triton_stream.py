"""Triton gRPC streams for the gateway: one bidirectional `ModelStreamInfer` stream per request.

`TritonEnsemble` wraps a `gateway.triton_client.TritonGrpcClient` (or a fake with the same methods:
`stream_infer`, `is_server_ready`, `is_model_ready`, `close`). Each stream carries exactly one request with
`triton_enable_empty_final_response`, so the end of a decoupled generation is always seen as a response
whose `triton_final_response` parameter is true. Errors that arrive inside the stream carry the engine's
`[<ErrorClass> param=...]` text (paddlellm.protocol), rebuilt here into typed errors.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
from tritonclient.utils import InferenceServerException

from gateway.translate import EnsembleRequest, EnsembleResponse
from gateway.triton_client import StreamRequest, Tensor
from paddlellm import protocol
from paddlellm.errors import Cancelled, EngineError, Overloaded

log = logging.getLogger("gateway")
ABORT_TIMEOUT_S = 10.0


def _typed_error(message: str) -> EngineError:
    err = protocol.parse_error(message)
    if err is not None:
        return err
    return EngineError(f"inference server error: {message}")


def _rpc_error(exc: grpc.aio.AioRpcError) -> EngineError:
    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return Overloaded("the inference server is unavailable")
    if code == grpc.StatusCode.CANCELLED:
        return Cancelled("stream cancelled")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return EngineError("the request timed out")
    return _typed_error(exc.details() or str(code))


def _scalar_str(result: Any, name: str) -> str:
    arr = result.as_numpy(name)
    if arr is None or arr.size == 0:
        return ""
    v = arr.reshape(-1)[0]
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _scalar_int(result: Any, name: str) -> int:
    arr = result.as_numpy(name)
    return int(arr.reshape(-1)[0]) if arr is not None and arr.size else 0


def decode_response(result: Any) -> EnsembleResponse:
    """An InferResult of the ensemble -> EnsembleResponse (an empty final response has no outputs)."""
    final = _is_final(result)
    ids = result.as_numpy(protocol.TOKEN_IDS)
    return EnsembleResponse(
        text=_scalar_str(result, protocol.TEXT_OUTPUT),
        token_ids=tuple(int(i) for i in ids.reshape(-1)) if ids is not None else (),
        finish_reason=_scalar_str(result, protocol.FINISH_REASON),
        prompt_tokens=_scalar_int(result, protocol.PROMPT_TOKENS),
        completion_tokens=_scalar_int(result, protocol.COMPLETION_TOKENS),
        engine_stats=_scalar_str(result, protocol.ENGINE_STATS),
        cached_tokens=_scalar_int(result, protocol.CACHED_TOKENS),
        final=final,
        logprobs=_scalar_str(result, protocol.LOGPROBS),
    )


class TritonStream:
    """One request's response stream. Iterate for EnsembleResponses (ending after the final one); typed
    EngineErrors are raised from the iteration. `cancel()` ends the request (see there).

    Reads never get cancelled under gRPC: grpc.aio leaks the native memory of a receive that is in flight
    when its call is cancelled or its awaiting task is (grpc/grpc#43360; measured here: ~1.7 KB of gateway
    RSS per disconnected stream, for good). So each read runs as its own future that the consumer awaits
    through `asyncio.shield`: a consumer cancelled by a client disconnect leaves the read running, and
    `cancel()` reads on to the end instead of cancelling the call."""

    def __init__(
        self,
        responses: Any,
        on_cancel: Callable[[], None] | None = None,
        on_tokens: Callable[[], None] | None = None,
        background: set[asyncio.Task[None]] | None = None,
    ) -> None:
        self._responses = responses
        self.on_cancel = on_cancel
        self._on_tokens = on_tokens
        self._background = background if background is not None else set()
        self._pending: asyncio.Future[Any] | None = None  # the read in flight
        self.done = False
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[EnsembleResponse]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[EnsembleResponse]:
        while not self.done:
            yield await self.next()

    async def next(self) -> EnsembleResponse:
        if self.done:
            raise StopAsyncIteration
        try:
            result, error = await self._read()
        except StopAsyncIteration:
            self.done = True
            raise EngineError("the inference stream closed before the final response") from None
        except grpc.aio.AioRpcError as e:
            self.done = True
            raise _rpc_error(e) from None
        except InferenceServerException as e:
            self.done = True
            raise _typed_error(e.message() or str(e)) from None
        if error is not None:
            # The request is over in Triton; close our side of the call without aborting anything.
            self.done = True
            self._responses.cancel()
            raise _typed_error(error.message() or str(error))
        resp = decode_response(result)
        if resp.token_ids and self._on_tokens is not None:
            self._on_tokens()
        if resp.final:
            self.done = True
        return resp

    async def _read(self) -> Any:
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._responses.__anext__())
            self._pending.add_done_callback(_retrieve)
        result = await asyncio.shield(self._pending)
        self._pending = None
        return result

    def cancel(self) -> None:
        """End the request unless the stream already ended (final response, error or cancel): `on_cancel`
        tells the engine to abort it, whose final response then ends the stream, read to there in the
        background (at most ABORT_TIMEOUT_S, then the gRPC call is cancelled). Without `on_cancel`, the
        call is cancelled at once."""
        if self.done:
            return
        self.done = True
        self.cancelled = True
        if self.on_cancel is None:
            self._responses.cancel()
            return
        self.on_cancel()
        task = asyncio.get_running_loop().create_task(self._read_to_end())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _read_to_end(self) -> None:
        try:
            async with asyncio.timeout(ABORT_TIMEOUT_S):
                while True:
                    result, error = await self._read()
                    if error is not None or _is_final(result):
                        return
        except (StopAsyncIteration, grpc.aio.AioRpcError, InferenceServerException):
            return
        except TimeoutError:
            log.warning("a cancelled request's stream did not end within %gs: cancelling it", ABORT_TIMEOUT_S)
            self._responses.cancel()


def _retrieve(read: asyncio.Future[Any]) -> None:
    """A read nobody awaits any more (its stream was given up) must not log 'exception never retrieved'."""
    if not read.cancelled():
        read.exception()


def _is_final(result: Any) -> bool:
    params = result.get_response().parameters
    return "triton_final_response" in params and bool(params["triton_final_response"].bool_param)


class TritonEnsemble:
    """The gateway's view of Triton: open request streams, check readiness."""

    def __init__(self, client: Any, ensemble_model: str, engine_model: str, timeout_s: float | None) -> None:
        self.client = client
        self.ensemble_model = ensemble_model
        self.engine_model = engine_model
        self.timeout_s = timeout_s
        self._alive_at = -1.0  # when the engine last proved alive: a passing probe or tokens for a request
        self._aborts: set[asyncio.Task[None]] = set()

    def open(self, req: EnsembleRequest, request_id: str, resume_ids: Sequence[int] = ()) -> TritonStream:
        """`resume_ids`: ids already streamed by a cut run; the engine continues after them."""
        inputs = [
            Tensor.string(protocol.PROMPT, req.prompt),
            Tensor.string(protocol.MESSAGES, req.messages),
            Tensor.string(protocol.SAMPLING, req.sampling),
            Tensor.int32(protocol.RESUME_IDS, resume_ids),
        ]
        if req.tools:  # optional: a model repository without tool support still serves everything else
            inputs.append(Tensor.string(protocol.TOOLS, req.tools))
        return self._open(
            self.ensemble_model,
            inputs,
            request_id,
            on_cancel=lambda: self._abort(request_id),
            on_tokens=self._engine_alive,
        )

    def _engine_alive(self) -> None:
        self._alive_at = time.monotonic()

    def _open(
        self,
        model: str,
        inputs: list[Tensor],
        request_id: str,
        on_cancel: Callable[[], None] | None = None,
        on_tokens: Callable[[], None] | None = None,
        **params: Any,
    ) -> TritonStream:
        request = StreamRequest(
            model, tuple(inputs), request_id, {"triton_enable_empty_final_response": True, **params}
        )
        responses = self.client.stream_infer(request, stream_timeout=self.timeout_s)
        return TritonStream(responses, on_cancel, on_tokens, self._aborts)

    def _abort(self, request_id: str) -> None:
        """Tell the engine directly: Triton 2.51 does not pass an ensemble's cancellation on to its decoupled
        step, and a request still queued in the engine has no detokenizer step to notice it either."""
        task = asyncio.get_running_loop().create_task(self._send_abort(request_id))
        self._aborts.add(task)
        task.add_done_callback(self._aborts.discard)

    async def _send_abort(self, request_id: str) -> None:
        inputs = [
            Tensor.int32(protocol.INPUT_IDS, ()),
            Tensor.string(protocol.SAMPLING, ""),
            Tensor.int32(protocol.RESUME_IDS, ()),
        ]
        stream = self._open(self.engine_model, inputs, request_id, **{protocol.ABORT_PARAMETER: True})
        try:
            async with asyncio.timeout(ABORT_TIMEOUT_S):
                async for _ in stream:
                    pass
        except (EngineError, TimeoutError) as e:
            log.warning("request %s: abort not confirmed by the engine: %s", request_id, e)
        finally:
            if not stream.done:
                stream.cancel()

    async def check_ready(self, timeout_s: float, probe: bool, cache_s: float) -> str | None:
        """None when serving works; otherwise why not. The probe runs a one-token request through the
        engine (directly, not through the ensemble) so a dead engine loop or worker shows up. Tokens that
        reached any request within `cache_s` prove the engine alive as well, so a busy engine whose queue
        delays the probe is not reported dead."""
        try:
            if not await self.client.is_server_ready(client_timeout=timeout_s):
                return "inference server is not ready"
            for model in (self.ensemble_model, self.engine_model):
                if not await self.client.is_model_ready(model, client_timeout=timeout_s):
                    return f"model '{model}' is not ready"
        except (InferenceServerException, grpc.aio.AioRpcError) as e:
            return f"inference server unreachable: {e}"
        if not probe or time.monotonic() - self._alive_at < cache_s:
            return None
        try:
            await asyncio.wait_for(self._probe(), timeout_s)
        except TimeoutError:
            return f"engine did not answer a one-token probe within {timeout_s:g}s"
        except EngineError as e:
            return f"engine probe failed: {e.message}"
        self._alive_at = time.monotonic()
        return None

    async def _probe(self) -> None:
        inputs = [
            Tensor.int32(protocol.INPUT_IDS, (0,)),
            Tensor.string(protocol.SAMPLING, json.dumps({"max_tokens": 1, "temperature": 0.0})),
            Tensor.int32(protocol.RESUME_IDS, ()),
        ]
        stream = self._open(self.engine_model, inputs, f"health-{uuid.uuid4().hex}")
        try:
            async for _ in stream:
                pass
        finally:
            if not stream.done:
                stream.cancel()

    async def drain(self) -> None:
        """Let abort requests in flight finish (at shutdown)."""
        if self._aborts:
            await asyncio.wait(set(self._aborts), timeout=ABORT_TIMEOUT_S)
