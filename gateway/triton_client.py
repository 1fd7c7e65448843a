"""The gateway's gRPC client for Triton: one-request streams and readiness, nothing else.

Why not `tritonclient.grpc.aio.InferenceServerClient`: its `stream_infer` defines a class per call, and a
class sits in a reference cycle, so every stream left a type object (with its dict, functions and
descriptors) that only a full garbage collection frees; CPython runs those ever more rarely as the heap
grows, so the gateway's RSS climbed by megabytes over a soak's first thousand streams. This client speaks
the same protocol through tritonclient's generated stubs (`service_pb2_grpc`, which Triton's own examples
use), with its classes defined once, and writes the single request itself rather than through a request
iterator (grpc.aio runs a consumer task per request iterator).

Responses keep tritonclient's public shapes: `(InferResult, None)` or `(None, InferenceServerException)` for
an error inside the stream; a broken call raises `grpc.aio.AioRpcError`.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import InferResult, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException


@dataclass(frozen=True)
class Tensor:
    """An input tensor in Triton's raw wire form (`raw_input_contents`)."""

    name: str
    datatype: str  # "BYTES" or "INT32"
    shape: tuple[int, ...]
    raw: bytes

    @classmethod
    def string(cls, name: str, value: str) -> Tensor:
        """A one-element BYTES tensor: Triton's encoding is a little-endian uint32 length, then the bytes."""
        data = value.encode("utf-8")
        return cls(name, "BYTES", (1,), struct.pack("<I", len(data)) + data)

    @classmethod
    def int32(cls, name: str, values: Sequence[int]) -> Tensor:
        arr = np.asarray(values, dtype="<i4").reshape(-1)
        return cls(name, "INT32", (arr.size,), arr.tobytes())


@dataclass(frozen=True)
class StreamRequest:
    """The one request a stream carries."""

    model_name: str
    inputs: tuple[Tensor, ...]
    request_id: str
    parameters: Mapping[str, bool | int | str] = field(default_factory=dict)

    def to_proto(self) -> Any:
        req = service_pb2.ModelInferRequest(model_name=self.model_name, id=self.request_id)
        for key, value in self.parameters.items():
            param = req.parameters[key]
            if isinstance(value, bool):  # before int: bool is an int
                param.bool_param = value
            elif isinstance(value, int):
                param.int64_param = value
            else:
                param.string_param = value
        for t in self.inputs:
            req.inputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
            req.raw_input_contents.append(t.raw)
        return req


class ResponseStream:
    """One `ModelStreamInfer` call with one request, written on the first read (so opening a stream never
    awaits). Async-iterate for `(InferResult | None, InferenceServerException | None)`; ends when Triton
    closes the call."""

    __slots__ = ("_call", "_request")

    def __init__(self, call: Any, request: Any) -> None:
        self._call = call
        self._request = request

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> tuple[Any, Any]:
        if self._request is not None:
            request, self._request = self._request, None
            await self._call.write(request)
            await self._call.done_writing()
        msg = await self._call.read()
        if msg is grpc.aio.EOF:
            raise StopAsyncIteration
        if msg.error_message:
            return None, InferenceServerException(msg=msg.error_message)
        return InferResult(msg.infer_response), None

    def cancel(self) -> bool:
        return self._call.cancel()


class TritonGrpcClient:
    """Create on the event loop that uses it (grpc.aio channels belong to one loop)."""

    def __init__(self, url: str, channel_args: Sequence[tuple[str, Any]] = ()) -> None:
        self._channel = grpc.aio.insecure_channel(url, options=list(channel_args))
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)

    def stream_infer(self, request: StreamRequest, stream_timeout: float | None = None) -> ResponseStream:
        return ResponseStream(self._stub.ModelStreamInfer(timeout=stream_timeout), request.to_proto())

    async def is_server_ready(self, client_timeout: float | None = None) -> bool:
        reply = await self._stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=client_timeout)
        return bool(reply.ready)

    async def is_model_ready(self, model_name: str, client_timeout: float | None = None) -> bool:
        reply = await self._stub.ModelReady(
            service_pb2.ModelReadyRequest(name=model_name), timeout=client_timeout
        )
        return bool(reply.ready)

    async def close(self) -> None:
        await self._channel.close()
