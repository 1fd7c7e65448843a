"""The gateway's /metrics against the fake Triton client and a canned Triton metrics page on loopback: the
engine's families pass verbatim, Triton's own do not, HTTP metrics count by route template and status."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.gateway_metrics import create_metrics_app, engine_families
from gateway.settings import GatewaySettings
from tests.fakes.triton_client import FakeTritonClient
from tests.metrics.promtext import parse

TRITON_PAGE = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="ensemble",version="1"} 3
# HELP paddlellm:requests_number_total Requests received by the engine (rejected ones too).
# TYPE paddlellm:requests_number_total counter
paddlellm:requests_number_total{model_name="smol"} 3
# HELP paddlellm:time_to_first_token_seconds From arrival in the engine to the first token.
# TYPE paddlellm:time_to_first_token_seconds histogram
paddlellm:time_to_first_token_seconds_count{model_name="smol"} 3
paddlellm:time_to_first_token_seconds_sum{model_name="smol"} 0.25
paddlellm:time_to_first_token_seconds_bucket{model_name="smol",le="0.1"} 2
paddlellm:time_to_first_token_seconds_bucket{model_name="smol",le="+Inf"} 3
# HELP nv_cpu_utilization CPU utilization rate [0.0 - 1.0]
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 0.5
"""


@pytest.fixture(scope="module")
def triton_metrics_url() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = TRITON_PAGE.encode()
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def settings(**kw: Any) -> GatewaySettings:
    return GatewaySettings(served_model_name="smol", max_model_len=256, **kw)


def test_engine_families_pass_verbatim_and_only_ours() -> None:
    kept = engine_families(TRITON_PAGE)
    assert "nv_" not in kept
    ours = [line for line in TRITON_PAGE.splitlines() if "paddlellm:" in line]
    assert kept.splitlines() == ours


def test_metrics_on_the_main_port(triton_metrics_url: str) -> None:
    app = create_app(
        settings(triton_metrics_url=triton_metrics_url), client=FakeTritonClient(max_model_len=256)
    )
    with TestClient(app) as c:
        assert (
            c.post("/v1/completions", json={"model": "smol", "prompt": "hi", "max_tokens": 5}).status_code
            == 200
        )
        assert (
            c.post("/v1/completions", json={"model": "smol", "prompt": "hi", "max_tokens": -1}).status_code
            == 400
        )
        assert c.get("/v1/models/smol").status_code == 200
        assert c.get("/v1/models/nope").status_code == 404
        assert c.get("/no/such/path").status_code == 404
        r = c.get("/metrics")
        r2 = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    page = parse(r.text)
    assert page.value("paddlellm:requests_number_total", model_name="smol") == 3
    assert page.hist_count("paddlellm:time_to_first_token_seconds") == 3
    assert not any(name.startswith("nv_") for name, _, _ in page.samples)
    total = "paddlellm:http_requests_total"
    assert page.value(total, method="POST", route="/v1/completions", status="200") == 1
    assert page.value(total, method="POST", route="/v1/completions", status="400") == 1
    assert page.value(total, route="/v1/models/{name:path}", status="200") == 1
    assert page.value(total, route="/v1/models/{name:path}", status="404") == 1
    assert page.value(total, route="other", status="404") == 1
    assert page.value(total) == 5  # /metrics itself is not counted
    assert page.hist_count("paddlellm:http_request_duration_seconds", route="/v1/completions") == 2
    assert page.value("paddlellm:http_requests_in_progress") == 0
    assert not any(name.endswith("_created") for name, _, _ in page.samples)
    assert parse(r2.text).value(total) == 5


def test_separate_metrics_port_moves_metrics_off_the_main_app(triton_metrics_url: str) -> None:
    s = settings(triton_metrics_url=triton_metrics_url, metrics_port=9999)
    with TestClient(create_app(s, client=FakeTritonClient(max_model_len=256))) as c:
        assert c.get("/metrics").status_code == 404
    with TestClient(create_metrics_app(s)) as m:
        page = parse(m.get("/metrics").text)
    assert page.value("paddlellm:requests_number_total") == 3


def test_triton_unreachable_leaves_the_gateway_metrics_and_says_why() -> None:
    s = settings(triton_metrics_url="http://127.0.0.1:9/metrics")
    with TestClient(create_app(s, client=FakeTritonClient(max_model_len=256))) as c:
        r = c.get("/metrics")
    assert r.status_code == 200
    assert "# paddlellm engine metrics unavailable: ConnectError" in r.text
    assert "paddlellm:http_requests_total" in r.text or "paddlellm:http_requests_in_progress" in r.text
    parse(r.text)
