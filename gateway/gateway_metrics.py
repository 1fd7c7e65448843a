"""Prometheus `/metrics` for the gateway: the engine's metrics re-exposed verbatim, plus the gateway's own.

- Engine metrics are measured in the llm_engine stub and published on tritonserver's metrics port
  (paddlellm/triton/engine_metrics.py). Each scrape of `/metrics` fetches that page and passes on, line for
  line, the families named `paddlellm:*`; nothing the engine knows is recomputed here. One engine serves
  every gateway worker, so these numbers are whole by construction.
- Gateway metrics (HTTP requests by route and status, their duration, requests in progress) come from an
  ASGI middleware. With several uvicorn workers the launcher points PROMETHEUS_MULTIPROC_DIR
  (prometheus_client's own variable, read when prometheus_client is imported) at a fresh directory; every
  worker writes its values there, and any process (a worker, or the separate metrics server) sums them all
  when scraped.

Where `/metrics` is served: on the main port when `settings.metrics_port` is None (as FastDeploy does),
otherwise by a separate one-process server the launcher starts (`metrics_app_from_env`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth import ApiKeyMiddleware
from gateway.settings import GatewaySettings
from paddlellm.protocol.metric_names import GATEWAY_METRICS, PREFIX, MetricSpec

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Triton writes the 0.0.4 text format; the gateway's part is rendered in the same format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SCRAPE_TIMEOUT_S = 5.0
_SPECS = {s.name[len(PREFIX) :]: s for s in GATEWAY_METRICS}


def _spec(short: str) -> MetricSpec:
    return _SPECS[short]


class GatewayMetrics:
    """The gateway's own metrics. `multiproc_dir`: prometheus_client's multiprocess directory (values live
    in files there, summed at collection) or None for a private in-memory registry (one process)."""

    def __init__(self, multiproc_dir: str | None = None) -> None:
        self.multiproc_dir = multiproc_dir
        # In multiprocess mode the values go to files, so the objects belong to no registry.
        self._registry = None if multiproc_dir else CollectorRegistry()
        reg = self._registry
        req, dur, prog = (
            _spec("http_requests_total"),
            _spec("http_request_duration_seconds"),
            _spec("http_requests_in_progress"),
        )
        self.requests = Counter(req.name.removesuffix("_total"), req.help, req.labels, registry=reg)
        self.duration = Histogram(dur.name, dur.help, dur.labels, buckets=dur.buckets, registry=reg)
        self.in_progress = Gauge(prog.name, prog.help, prog.labels, registry=reg, multiprocess_mode="livesum")
        gs = _spec("global_scheduler_events_total")
        self.scheduler_events = Counter(gs.name.removesuffix("_total"), gs.help, gs.labels, registry=reg)

    def count_scheduler_event(self, event: str, n: int) -> None:
        """The global scheduler's `SchedulerStats` increments (each worker is its own instance; summed)."""
        self.scheduler_events.labels(event).inc(n)

    @classmethod
    def from_env(cls) -> GatewayMetrics:
        return cls(os.environ.get(MULTIPROC_ENV) or None)

    def render(self) -> str:
        """The gateway's metrics in text format (every worker's, in multiprocess mode)."""
        if self._registry is not None:
            source: Any = self._registry
        else:
            source = CollectorRegistry()
            MultiProcessCollector(source, path=self.multiproc_dir)
        out = CollectorRegistry()
        out.register(_WithoutCreated(source))
        return generate_latest(out).decode()


class _WithoutCreated:
    """A collector passing on another's families minus the `_created` timestamps (not part of our set)."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        for family in self.source.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


def engine_families(text: str, prefix: str = PREFIX) -> str:
    """The lines of a Prometheus text page that belong to families named `prefix*`, verbatim."""
    keep: list[str] = []
    for line in text.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            if line.split(" ", 3)[2].startswith(prefix):
                keep.append(line)
        elif line.startswith(prefix):
            keep.append(line)
    return "\n".join(keep) + ("\n" if keep else "")


async def scrape_engine(url: str | None, client: httpx.AsyncClient | None = None) -> str:
    """The engine's families from Triton's metrics endpoint, or a comment saying why there are none."""
    if not url:
        return "# paddlellm engine metrics: no Triton metrics endpoint configured\n"
    try:
        if client is None:
            async with httpx.AsyncClient(timeout=SCRAPE_TIMEOUT_S) as own:
                resp = await own.get(url)
        else:
            resp = await client.get(url, timeout=SCRAPE_TIMEOUT_S)
        resp.raise_for_status()
    except httpx.HTTPError as e:
        return f"# paddlellm engine metrics unavailable: {type(e).__name__}: {e}\n".replace("\n", " ") + "\n"
    return engine_families(resp.text)


def launcher_families(path: str | None) -> str:
    """The launcher's own counters (launcher/restart_counter.py writes them; replaced atomically)."""
    if not path:
        return ""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return ""
    return engine_families(text)


async def metrics_response(settings: GatewaySettings, metrics: GatewayMetrics) -> Response:
    body = await scrape_engine(settings.triton_metrics_url)
    body += launcher_families(settings.launcher_metrics_path) + metrics.render()
    return Response(body, media_type=CONTENT_TYPE)


class HttpMetricsMiddleware:
    """Counts every HTTP request by method, route template (not the raw path: bounded label values) and
    status; times it to the end of its response body, streams included."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics, routes: Iterable[Any], skip: tuple[str, ...]):
        self.app, self.metrics, self.routes, self.skip = app, metrics, routes, skip

    def _route(self, scope: Scope) -> str:
        partial = None
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return route.path
            if match is Match.PARTIAL and partial is None:
                partial = route.path  # right path, wrong method
        return partial or "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.skip:
            await self.app(scope, receive, send)
            return
        method, route = scope["method"], self._route(scope)
        status = 500  # unless the app starts a response
        start = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        m = self.metrics
        m.in_progress.labels(method, route).inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            m.in_progress.labels(method, route).dec()
            m.duration.labels(method, route).observe(time.perf_counter() - start)
            m.requests.labels(method, route, str(status)).inc()


def install_metrics(
    app: Any, settings: GatewaySettings, metrics: GatewayMetrics | None = None
) -> GatewayMetrics:
    """Instrument a FastAPI app; serve /metrics on it unless a separate metrics port is configured."""
    metrics = metrics or GatewayMetrics.from_env()
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics, routes=app.router.routes, skip=("/metrics",))
    if settings.metrics_port is None:

        async def serve_metrics() -> Response:
            return await metrics_response(settings, metrics)

        app.add_api_route("/metrics", serve_metrics, methods=["GET"], include_in_schema=False)
    return metrics


def create_metrics_app(settings: GatewaySettings, metrics: GatewayMetrics | None = None) -> Starlette:
    """The separate metrics server (--metrics-port): GET /metrics only."""
    metrics = metrics or GatewayMetrics.from_env()

    async def serve_metrics(request: Request) -> Response:
        return await metrics_response(settings, metrics)

    # The same key as the main port's, unless /metrics is exempt (the default).
    auth = (
        []
        if settings.api_key is None
        else [Middleware(ApiKeyMiddleware, key=settings.api_key, exempt_paths=settings.api_key_exempt_paths)]
    )
    return Starlette(routes=[Route("/metrics", serve_metrics, methods=["GET"])], middleware=auth)


def metrics_app_from_env() -> Starlette:
    """uvicorn --factory entry point of the metrics server the launcher starts."""
    return create_metrics_app(GatewaySettings.from_env())
