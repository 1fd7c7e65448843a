"""The gateway's own Triton gRPC client against a gRPC server speaking Triton's protocol (in its own
process, so the census of cyclic garbage counts the client's alone): wire encoding (checked against
tritonclient's), streams, errors, readiness, cancel, and no garbage left per stream."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing as mp
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from gateway.triton_client import StreamRequest, Tensor, TritonGrpcClient


def test_tensor_encoding_matches_tritonclient() -> None:
    for text in ("", "hello", "你好 🌍", "x" * 70000):
        want = serialize_byte_tensor(np.array([text.encode("utf-8")], dtype=np.object_))
        assert Tensor.string("p", text).raw == want.item()
    t = Tensor.int32("ids", [1, -2, 2**31 - 1])
    assert t.shape == (3,) and np.frombuffer(t.raw, dtype="<i4").tolist() == [1, -2, 2**31 - 1]
    assert Tensor.int32("ids", ()).shape == (0,) and Tensor.int32("ids", ()).raw == b""


def test_request_proto() -> None:
    req = StreamRequest("m", (Tensor.string("a", "x"), Tensor.int32("b", [7])), "rid",
                        {"flag": True, "n": 3, "s": "v"}).to_proto()
    assert (req.model_name, req.id) == ("m", "rid")
    inputs = [(i.name, i.datatype, list(i.shape)) for i in req.inputs]
    assert inputs == [("a", "BYTES", [1]), ("b", "INT32", [1])]
    assert list(req.raw_input_contents) == [b"\x01\x00\x00\x00x", np.int32(7).tobytes()]
    p = req.parameters
    assert p["flag"].WhichOneof("parameter_choice") == "bool_param" and p["flag"].bool_param
    assert p["n"].WhichOneof("parameter_choice") == "int64_param" and p["n"].int64_param == 3
    assert p["s"].string_param == "v"


class _Triton(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Answers each stream's request with `tokens` responses, then an empty final one that echoes the
    request's inputs (as outputs of the same names) and its parameters; a model named "bad" answers with
    an in-stream error."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens

    async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC's name)
        return service_pb2.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        return service_pb2.ModelReadyResponse(ready=request.name == "ensemble")

    async def ModelStreamInfer(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:  # noqa: N802
        async for req in requests:
            if req.model_name == "bad":
                yield service_pb2.ModelStreamInferResponse(error_message="in ensemble 'ensemble', nope")
                continue
            for i in range(self.tokens):
                resp = service_pb2.ModelInferResponse(model_name=req.model_name, id=req.id)
                resp.outputs.add(name="token_ids", datatype="INT32", shape=[1])
                resp.raw_output_contents.append(np.int32(i).tobytes())
                yield service_pb2.ModelStreamInferResponse(infer_response=resp)
            final = service_pb2.ModelInferResponse(model_name=req.model_name, id=req.id)
            for tensor, raw in zip(req.inputs, req.raw_input_contents, strict=True):
                final.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
                final.raw_output_contents.append(raw)
            for key, value in req.parameters.items():
                final.parameters[key].CopyFrom(value)
            final.parameters["triton_final_response"].bool_param = True
            yield service_pb2.ModelStreamInferResponse(infer_response=final)


def _server_main(tokens: int, ports: Any, stop: Any) -> None:
    async def main() -> None:
        servicer = _Triton(tokens)
        server = grpc.aio.server()
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ports.put(port)
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        await server.stop(None)

    asyncio.run(main())


@contextlib.contextmanager
def _triton(tokens: int) -> Iterator[str]:
    ctx = mp.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_server_main, args=(tokens, ports, stop), daemon=True)
    proc.start()
    try:
        yield f"127.0.0.1:{ports.get(timeout=60)}"
    finally:
        stop.set()
        proc.join(10)
        if proc.exitcode is None:
            proc.kill()
            proc.join(5)


def _request(model: str = "ensemble", rid: str = "r1") -> StreamRequest:
    params = {"triton_enable_empty_final_response": True}
    return StreamRequest(model, (Tensor.string("prompt", "hi"),), rid, params)


async def _drain(client: TritonGrpcClient, req: StreamRequest) -> list[tuple[Any, Any]]:
    return [item async for item in client.stream_infer(req, stream_timeout=30)]


def test_stream_errors_and_readiness() -> None:
    async def main(url: str) -> None:
        client = TritonGrpcClient(url)
        try:
            assert await client.is_server_ready(client_timeout=5)
            assert await client.is_model_ready("ensemble", client_timeout=5)
            assert not await client.is_model_ready("other", client_timeout=5)
            inputs = (Tensor.string("prompt", "你好"), Tensor.int32("ids", [3, 4]))
            params = {"triton_enable_empty_final_response": True, "n": 2}
            req = StreamRequest("ensemble", inputs, "r1", params)
            got = await _drain(client, req)
            assert [r.as_numpy("token_ids").tolist() for r, _ in got[:-1]] == [[0], [1], [2]]
            final = got[-1][0]
            assert final.as_numpy("prompt").tolist() == ["你好".encode()]
            assert final.as_numpy("ids").tolist() == [3, 4]
            params = final.get_response().parameters
            assert params["triton_final_response"].bool_param and final.get_response().id == "r1"
            assert params["triton_enable_empty_final_response"].bool_param and params["n"].int64_param == 2
            ((result, error),) = await _drain(client, _request("bad"))
            assert result is None and isinstance(error, InferenceServerException)
            assert "nope" in error.message()
        finally:
            await client.close()

    with _triton(tokens=3) as url:
        asyncio.run(main(url))
        port = url


    async def gone() -> None:
        client = TritonGrpcClient(port)
        try:
            with pytest.raises(grpc.aio.AioRpcError, match="failed to connect") as info:
                await _drain(client, _request())
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await client.close()

    asyncio.run(gone())  # the server is gone: the call itself fails with gRPC's error


def test_cancel_ends_the_call() -> None:
    async def main(url: str) -> None:
        client = TritonGrpcClient(url)
        try:
            stream = client.stream_infer(_request(), stream_timeout=30)
            await stream.__anext__()
            assert stream.cancel()
            with pytest.raises(asyncio.CancelledError, match="^$"):
                await stream.__anext__()
        finally:
            await client.close()

    with _triton(tokens=10**6) as url:
        asyncio.run(main(url))


def test_streams_leave_no_cyclic_garbage() -> None:
    """tritonclient's stream_infer left a class (a reference cycle) per stream, freed only by a full
    collection; the gateway's client must leave nothing for the cycle collector."""

    async def main(url: str) -> int:
        client = TritonGrpcClient(url)
        try:
            for i in range(20):  # warm up: first-use caches of grpc and protobuf
                await _drain(client, _request(rid=f"w{i}"))
            gc.collect()
            gc.disable()
            try:
                for i in range(200):
                    await _drain(client, _request(rid=f"r{i}"))
                return gc.collect()
            finally:
                gc.enable()
        finally:
            await client.close()

    with _triton(tokens=2) as url:
        found = asyncio.run(main(url))
    assert found < 50, f"{found} objects in reference cycles after 200 streams"
