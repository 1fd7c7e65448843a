"""The gateway's FastAPI app: `create_app(settings, client=None)`; no globals, no import-time work.

`client` is a `gateway.triton_client.TritonGrpcClient` or a fake with its methods; when None, the app
connects to `settings.triton_url` at start-up (a grpc.aio channel must be created on the serving event loop).
`app_from_env` is the factory uvicorn workers import (`--factory`): it reads the settings file the launcher
wrote.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from gateway.auth import ApiKeyMiddleware
from gateway.backend_protocol import GenerationBackend
from gateway.gateway_metrics import GatewayMetrics, install_metrics
from gateway.limits import StreamSlots
from gateway.openai_errors import ApiError, install_handlers, model_not_found
from gateway.openapi_doc import install_openapi
from gateway.serving import GatewayContext, generate
from gateway.settings import GatewaySettings
from gateway.triton_client import TritonGrpcClient
from gateway.triton_stream import TritonEnsemble

GRPC_GRACE_S = 5.0


def create_app(
    settings: GatewaySettings,
    client: Any = None,
    backend_factory: BackendFactory | None = None,
    metrics: GatewayMetrics | None = None,
    media_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """`backend_factory(local_ensemble)` is an async context manager yielding the backend requests go to
    (e.g. the global scheduler wrapping the local ensemble); default: the local ensemble itself.
    `media_transport`: how allowed image URLs are fetched (tests pass httpx.MockTransport; default: HTTP)."""
    holder: dict[str, GatewayContext] = {}
    created = int(time.time())

    def ctx() -> GatewayContext:
        if "ctx" not in holder:
            raise ApiError(503, "the gateway is starting", type="server_error", code="not_ready")
        return holder["ctx"]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = client is None
        if own:
            triton = TritonGrpcClient(settings.triton_url, channel_args=_channel_args())
        else:
            triton = client
        # gRPC's deadline only backs up the gateway's own (limits.DeadlineStream), which aborts the engine.
        grpc_timeout = (
            None if settings.request_timeout_s is None else settings.request_timeout_s + GRPC_GRACE_S
        )
        ensemble = TritonEnsemble(triton, settings.ensemble_model, settings.engine_model, grpc_timeout)
        media = None
        if settings.enable_mm and settings.allowed_media_domains:
            media = httpx.AsyncClient(transport=media_transport, follow_redirects=False)
        try:
            async with (backend_factory or _local)(ensemble) as backend:
                holder["ctx"] = GatewayContext(
                    settings, backend, StreamSlots(settings.max_concurrent_streams), media
                )
                try:
                    yield
                finally:
                    holder.pop("ctx", None)
                    await backend.drain()
        finally:
            await ensemble.drain()
            if media is not None:
                await media.aclose()
            if own:
                await triton.close()

    app = FastAPI(
        title="paddlellm OpenAI-compatible gateway", lifespan=lifespan, docs_url=None, redoc_url=None
    )
    install_handlers(app)
    install_openapi(app, settings)
    if settings.api_key is not None:  # inside the metrics middleware, so 401s are counted too
        app.add_middleware(ApiKeyMiddleware, key=settings.api_key, exempt_paths=settings.api_key_exempt_paths)
    install_metrics(app, settings, metrics)  # HTTP metrics; /metrics here unless settings.metrics_port is set

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        """A chat completion (OpenAI's API); streamed as server-sent events with `stream: true`."""
        return await generate(request, ctx(), "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        """A text completion of one prompt (OpenAI's legacy API); streamed with `stream: true`."""
        return await generate(request, ctx(), "completion")

    def model_card() -> dict[str, Any]:
        return {
            "id": settings.served_model_name,
            "object": "model",
            "created": created,
            "owned_by": "paddlellm",
            "root": settings.served_model_name,
            "max_model_len": settings.max_model_len,
        }

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        """The one served model."""
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> dict[str, Any]:
        """The served model, by its name or "default"."""
        if name not in (settings.served_model_name, "default"):
            raise model_not_found(name)
        return model_card()

    async def health(probe: bool) -> Response:
        reason = await ctx().backend.check_ready(settings.health_timeout_s, probe, settings.health_cache_s)
        if reason is not None:
            return ApiError(503, reason, type="server_error", code="not_ready").response()
        return JSONResponse({"status": "ok"})

    @app.get("/health")
    async def health_check() -> Response:
        """Triton and every model ready, and (unless disabled) the engine answers a one-token probe."""
        return await health(settings.health_probe)

    @app.get("/ready")
    async def ready_check() -> Response:
        """Readiness only: Triton and the models report READY (no probe)."""
        return await health(False)

    return app


BackendFactory = Callable[[TritonEnsemble], AbstractAsyncContextManager[GenerationBackend]]


@asynccontextmanager
async def _local(ensemble: TritonEnsemble) -> AsyncIterator[GenerationBackend]:
    yield ensemble


def app_from_env() -> FastAPI:
    """uvicorn --factory entry point for launcher-started workers."""
    settings = GatewaySettings.from_env()
    metrics = GatewayMetrics.from_env()
    factory = None
    if settings.global_scheduler is not None:
        from gateway.global_scheduler.scheduled_backend import global_backend_factory

        factory = global_backend_factory(
            settings.global_scheduler, settings.scheduler_capacity, on_event=metrics.count_scheduler_event
        )
    return create_app(settings, backend_factory=factory, metrics=metrics)


def _channel_args() -> list[tuple[str, int]]:
    """tritonclient's defaults, plus reconnect attempts at most 1 s apart: when the launcher restarts
    tritonserver (a dead engine), gRPC's default backoff (1 s growing to 120 s) would keep the gateway
    away from the restarted server for up to tens of seconds after it is back."""
    from tritonclient.grpc import KeepAliveOptions
    from tritonclient.grpc._client import MAX_GRPC_MESSAGE_SIZE

    ka = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", ka.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", ka.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", ka.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", ka.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.min_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
