"""The metrics dashboard, defined once: panels whose series carry both the PromQL of the Grafana dashboard
(docs/grafana-dashboard.json, written by `grafana_dashboard()`) and the same computation over scraped
/metrics pages (`Window`), which benchmarks/metrics_dashboard.py renders with matplotlib."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

P = "paddlellm:"

# ------------------------------------------------------------------------------------------ scrapes

Labels = frozenset[tuple[str, str]]


@dataclass(frozen=True)
class Scrape:
    t: float
    samples: dict[tuple[str, Labels], float]

    def total(self, name: str, **labels: str) -> float:
        want = set(labels.items())
        return sum(v for (n, lab), v in self.samples.items() if n == name and want <= lab)

    def buckets(self, name: str) -> dict[float, float]:
        out: dict[float, float] = {}
        for (n, lab), v in self.samples.items():
            if n == name + "_bucket":
                le = float(dict(lab)["le"].replace("+Inf", "inf"))
                out[le] = out.get(le, 0.0) + v
        return out


def parse_scrape(text: str, t: float) -> Scrape:
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return Scrape(t, samples)


@dataclass(frozen=True)
class Window:
    a: Scrape
    b: Scrape

    def rate(self, name: str, **labels: str) -> float:
        return max(0.0, self.b.total(name, **labels) - self.a.total(name, **labels)) / (self.b.t - self.a.t)

    def gauge(self, name: str) -> float:
        return self.b.total(name)

    def mean(self, hist: str) -> float | None:
        n = self.b.total(hist + "_count") - self.a.total(hist + "_count")
        return (self.b.total(hist + "_sum") - self.a.total(hist + "_sum")) / n if n > 0 else None

    def quantile(self, q: float, hist: str) -> float | None:
        """histogram_quantile over the window's bucket increases (linear inside the bucket, as Prometheus)."""
        a, b = self.a.buckets(hist), self.b.buckets(hist)
        les = sorted(b)
        inc = [b[le] - a.get(le, 0.0) for le in les]
        if not les or inc[-1] <= 0:
            return None
        rank, prev_le, prev_n = q * inc[-1], 0.0, 0.0
        for le, n in zip(les, inc, strict=True):
            if n >= rank:
                if math.isinf(le):
                    return prev_le
                return prev_le + (le - prev_le) * ((rank - prev_n) / (n - prev_n) if n > prev_n else 1.0)
            prev_le, prev_n = le, n
        return None


# ------------------------------------------------------------------------------------------ panels


@dataclass(frozen=True)
class Series:
    legend: str
    promql: str
    local: Callable[[Window], float | None]


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str  # Grafana unit id
    series: tuple[Series, ...]


M = '{model_name=~"$model_name"}'


def _rate(name: str, **labels: str) -> Series:
    sel = ",".join([*(f'{k}="{v}"' for k, v in labels.items()), 'model_name=~"$model_name"'])
    legend = ",".join(labels.values()) or name.removeprefix(P).removesuffix("_total")
    return Series(legend, f"sum(rate({P}{name}{{{sel}}}[1m]))", lambda w: w.rate(P + name, **labels))


def _gauge(name: str, legend: str) -> Series:
    return Series(legend, f"sum({P}{name}{M})", lambda w: w.gauge(P + name))


def _q(q: float, name: str) -> Series:
    expr = f"histogram_quantile({q}, sum by (le) (rate({P}{name}_bucket{M}[1m])))"
    return Series(f"p{round(q * 100)}", expr, lambda w: w.quantile(q, P + name))


def _mean(name: str, legend: str) -> Series:
    expr = f"sum(rate({P}{name}_sum{M}[1m])) / sum(rate({P}{name}_count{M}[1m]))"
    return Series(legend, expr, lambda w: w.mean(P + name))


def _ratio(num: str, den: str, legend: str) -> Series:
    expr = f"sum(rate({P}{num}{M}[1m])) / sum(rate({P}{den}{M}[1m]))"

    def local(w: Window) -> float | None:
        d = w.rate(P + den)
        return w.rate(P + num) / d if d > 0 else None

    return Series(legend, expr, local)


def _position_acceptance(position: int) -> Series:
    """Speculative decoding: the share of drafts whose token at `position` was accepted."""
    num, den = P + "spec_decode_num_accepted_tokens_per_pos_total", P + "spec_decode_num_drafts_total"
    sel = f'{{position="{position}",model_name=~"$model_name"}}'
    expr = f"sum(rate({num}{sel}[1m])) / sum(rate({den}{M}[1m]))"

    def local(w: Window) -> float | None:
        d = w.rate(den)
        return w.rate(num, position=str(position)) / d if d > 0 else None

    return Series(f"position {position}", expr, local)


def _http(status_re: str, legend: str) -> Series:
    expr = f'sum(rate({P}http_requests_total{{status=~"{status_re}"}}[1m]))'
    pattern = status_re.replace("..", "")

    def local(w: Window) -> float:
        keys = {dict(lab).get("status", "") for (n, lab) in w.b.samples if n == P + "http_requests_total"}
        return sum(w.rate(P + "http_requests_total", status=s) for s in keys if s.startswith(pattern))

    return Series(legend, expr, local)


PANELS: tuple[Panel, ...] = (
    Panel(
        "Finished requests / s by reason",
        "reqps",
        (
            _rate("request_success_total", finished_reason="stop"),
            _rate("request_success_total", finished_reason="length"),
            _rate("request_success_total", finished_reason="abort"),
            _rate("request_failure_total"),
        ),
    ),
    Panel(
        "Requests running / waiting",
        "short",
        (_gauge("num_requests_running", "running"), _gauge("num_requests_waiting", "waiting")),
    ),
    Panel(
        "Time to first token",
        "s",
        (_q(0.5, "time_to_first_token_seconds"), _q(0.95, "time_to_first_token_seconds")),
    ),
    Panel(
        "Time per output token",
        "s",
        (_q(0.5, "time_per_output_token_seconds"), _q(0.95, "time_per_output_token_seconds")),
    ),
    Panel(
        "End-to-end latency and queue time",
        "s",
        (
            _q(0.5, "e2e_request_latency_seconds"),
            _q(0.95, "e2e_request_latency_seconds"),
            Series(
                "queue p95",
                _q(0.95, "request_queue_time_seconds").promql,
                _q(0.95, "request_queue_time_seconds").local,
            ),
        ),
    ),
    Panel("Tokens / s", "short", (_rate("prompt_tokens_total"), _rate("generation_tokens_total"))),
    Panel("KV-cache usage", "percentunit", (_gauge("kv_cache_usage_perc", "used"),)),
    Panel(
        "Batch size per step and preemptions / s",
        "short",
        (_mean("batch_size", "mean batch"), _rate("num_preemptions_total")),
    ),
    Panel(
        "Prefill and decode time (mean)",
        "s",
        (_mean("request_prefill_time_seconds", "prefill"), _mean("request_decode_time_seconds", "decode")),
    ),
    Panel(
        "Gateway HTTP requests / s", "reqps", (_http("2..", "2xx"), _http("4..", "4xx"), _http("5..", "5xx"))
    ),
    Panel(
        "Prefix-cache hit rate (tokens)",
        "percentunit",
        (_ratio("prefix_cache_hits_total", "prefix_cache_queries_total", "hit rate"),),
    ),
    Panel(
        "Speculative decoding: draft and accepted tokens / s",
        "short",
        (_rate("spec_decode_num_draft_tokens_total"), _rate("spec_decode_num_accepted_tokens_total")),
    ),
    Panel(
        "Speculative decoding: acceptance rate (all, per draft position)",
        "percentunit",
        (
            _ratio("spec_decode_num_accepted_tokens_total", "spec_decode_num_draft_tokens_total", "all"),
            *(_position_acceptance(j) for j in range(5)),
        ),
    ),
)


def grafana_dashboard() -> dict:
    panels = []
    for i, p in enumerate(PANELS):
        targets = [
            {
                "refId": chr(65 + j),
                "expr": s.promql,
                "legendFormat": s.legend,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
            }
            for j, s in enumerate(p.series)
        ]
        panels.append(
            {
                "id": i + 1,
                "type": "timeseries",
                "title": p.title,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
                "fieldConfig": {"defaults": {"unit": p.unit, "min": 0}, "overrides": []},
                "options": {
                    "legend": {"displayMode": "list", "placement": "bottom"},
                    "tooltip": {"mode": "multi"},
                },
                "targets": targets,
            }
        )
    variables = [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus"},
        {
            "name": "model_name",
            "label": "model",
            "type": "query",
            "includeAll": True,
            "multi": True,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "refresh": 2,
            "definition": f"label_values({P}num_requests_running, model_name)",
            "query": {"query": f"label_values({P}num_requests_running, model_name)", "refId": "models"},
        },
    ]
    return {
        "title": "paddlellm serving",
        "uid": "paddlellm-serving",
        "tags": ["paddlellm", "llm"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": variables},
        "panels": panels,
    }
