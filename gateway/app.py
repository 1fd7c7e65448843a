"""The gateway's FastAPI app: `create_app(settings, client=None)`; no globals, no import-time work.

`client` is a `tritonclient.grpc.aio.InferenceServerClient` or a fake with its methods; when None, the app
connects to `settings.triton_url` at start-up (the aio client must be created on the serving event loop).
`app_from_env` is the factory uvicorn workers import (`--factory`): it reads the settings file the launcher
wrote.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from gateway.backend_protocol import GenerationBackend
from gateway.gateway_metrics import GatewayMetrics, install_metrics
from gateway.openai_errors import ApiError, install_handlers, model_not_found
from gateway.serving import GatewayContext, generate
from gateway.settings import GatewaySettings
from gateway.triton_stream import TritonEnsemble


def create_app(
    settings: GatewaySettings,
    client: Any = None,
    backend_factory: BackendFactory | None = None,
    metrics: GatewayMetrics | None = None,
) -> FastAPI:
    """`backend_factory(local_ensemble)` is an async context manager yielding the backend requests go to
    (e.g. the global scheduler wrapping the local ensemble); default: the local ensemble itself."""
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
            from tritonclient.grpc.aio import InferenceServerClient

            triton = InferenceServerClient(settings.triton_url)
        else:
            triton = client
        ensemble = TritonEnsemble(
            triton, settings.ensemble_model, settings.engine_model, settings.request_timeout_s
        )
        try:
            async with (backend_factory or _local)(ensemble) as backend:
                holder["ctx"] = GatewayContext(settings, backend)
                try:
                    yield
                finally:
                    holder.pop("ctx", None)
                    await backend.drain()
        finally:
            await ensemble.drain()
            if own:
                await triton.close()

    app = FastAPI(
        title="paddlellm OpenAI-compatible gateway", lifespan=lifespan, docs_url=None, redoc_url=None
    )
    install_handlers(app)
    install_metrics(app, settings, metrics)  # HTTP metrics; /metrics here unless settings.metrics_port is set

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), settings.api_key.encode()
        ):
            raise ApiError(
                401, "invalid or missing API key (send 'Authorization: Bearer <key>')", code="invalid_api_key"
            )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        authorize(request)
        return await generate(request, ctx(), "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        authorize(request)
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
    async def list_models(request: Request) -> dict[str, Any]:
        authorize(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request) -> dict[str, Any]:
        authorize(request)
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
