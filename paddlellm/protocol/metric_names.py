"""Every Prometheus metric the server exports, as data: name, type, unit, help, labels and buckets.

One table read by the engine's exporter (paddlellm/triton/engine_metrics.py, through Triton's python-backend
metrics API), the gateway (gateway/gateway_metrics.py) and the docs test (docs/metrics.md must list each name
with its type).
Names follow FastDeploy's set under the project's prefix; counters carry their `_total` suffix in the name,
as they appear on the wire. Pure Python: importable from the engine, the gateway and tests alike.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "paddlellm:"
COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
ENGINE, GATEWAY, LAUNCHER = "engine", "gateway", "launcher"

# Bucket upper bounds (le); +Inf is implicit. Chosen for CPU-to-GPU latencies of small and large models.
LATENCY_BUCKETS = (
    *(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5),
    *(10.0, 15.0, 20.0, 30.0, 40.0, 60.0, 80.0, 120.0, 160.0, 240.0),
)
TPOT_BUCKETS = (
    *(0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5),
    *(0.75, 1.0, 2.5),
)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# Structured output: a compile takes ~0.5-5 ms (llguidance), a hostile one up to its budget; a step's mask
# fill ~5 us-1 ms per row (docs/structured-output.md).
GRAMMAR_COMPILE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
GRAMMAR_MASK_BUCKETS = (
    *(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)


@dataclass(frozen=True)
class MetricSpec:
    name: str  # full name on the wire, prefix included
    kind: str  # COUNTER | GAUGE | HISTOGRAM
    unit: str
    help: str
    side: str  # ENGINE (measured in the llm_engine stub) | GATEWAY (the HTTP server) | LAUNCHER (supervision)
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    only_with: str = ""  # the flag that makes it exported ("" = always on the page)

    def __post_init__(self) -> None:
        if not self.name.startswith(PREFIX):
            raise ValueError(f"metric {self.name!r} lacks the {PREFIX!r} prefix")
        if (self.kind == HISTOGRAM) != bool(self.buckets):
            raise ValueError(f"metric {self.name!r}: histograms, and only they, have buckets")
        if (self.kind == COUNTER) != self.name.endswith("_total"):
            raise ValueError(f"metric {self.name!r}: counters, and only they, end in _total")


def _m(
    name: str,
    kind: str,
    unit: str,
    help: str,
    side: str = ENGINE,
    labels: tuple[str, ...] = (),
    buckets: tuple[float, ...] = (),
    only_with: str = "",
) -> MetricSpec:
    return MetricSpec(PREFIX + name, kind, unit, help, side, labels, buckets, only_with)


MODEL = ("model_name",)

ENGINE_METRICS: tuple[MetricSpec, ...] = (
    # Requests
    _m(
        "requests_number_total",
        COUNTER,
        "requests",
        "Requests received by the engine (rejected ones too).",
        labels=MODEL,
    ),
    _m(
        "request_success_total",
        COUNTER,
        "requests",
        "Requests that finished without an error, by finish reason (stop, length, abort).",
        labels=MODEL + ("finished_reason",),
    ),
    _m(
        "request_failure_total",
        COUNTER,
        "requests",
        "Requests that ended with an error (rejected at admission, queue timeout, engine failure).",
        labels=MODEL,
    ),
    _m(
        "num_requests_running",
        GAUGE,
        "requests",
        "Requests holding KV blocks (prefilling or decoding).",
        labels=MODEL,
    ),
    _m(
        "num_requests_waiting",
        GAUGE,
        "requests",
        "Requests queued in the engine, preempted ones included.",
        labels=MODEL,
    ),
    # Latency (engine clock: from the engine accepting the request)
    _m(
        "time_to_first_token_seconds",
        HISTOGRAM,
        "seconds",
        "From arrival in the engine to the first token.",
        labels=MODEL,
        buckets=LATENCY_BUCKETS,
    ),
    _m(
        "time_per_output_token_seconds",
        HISTOGRAM,
        "seconds",
        "Mean time between output tokens of a request: decode time / (output tokens - 1); requests with one "
        "output token are not observed.",
        labels=MODEL,
        buckets=TPOT_BUCKETS,
    ),
    _m(
        "e2e_request_latency_seconds",
        HISTOGRAM,
        "seconds",
        "From arrival in the engine to the last token.",
        labels=MODEL,
        buckets=LATENCY_BUCKETS,
    ),
    _m(
        "request_inference_time_seconds",
        HISTOGRAM,
        "seconds",
        "From first scheduled to finished (prefill + decode, preempted spells included).",
        labels=MODEL,
        buckets=LATENCY_BUCKETS,
    ),
    _m(
        "request_queue_time_seconds",
        HISTOGRAM,
        "seconds",
        "From arrival to first scheduled (waiting).",
        labels=MODEL,
        buckets=LATENCY_BUCKETS,
    ),
    _m(
        "request_prefill_time_seconds",
        HISTOGRAM,
        "seconds",
        "From first scheduled to the first token.",
        labels=MODEL,
        buckets=LATENCY_BUCKETS,
    ),
    _m(
        "request_decode_time_seconds",
        HISTOGRAM,
        "seconds",
        "From the first token to the last token.",
        labels=MODEL,
        buckets=LATENCY_BUCKETS,
    ),
    # Tokens
    _m(
        "prompt_tokens_total",
        COUNTER,
        "tokens",
        "Prompt tokens of requests whose prefill completed.",
        labels=MODEL,
    ),
    _m("generation_tokens_total", COUNTER, "tokens", "Output tokens generated.", labels=MODEL),
    _m(
        "request_prompt_tokens",
        HISTOGRAM,
        "tokens",
        "Prompt length of each finished request.",
        labels=MODEL,
        buckets=TOKEN_BUCKETS,
    ),
    _m(
        "request_generation_tokens",
        HISTOGRAM,
        "tokens",
        "Output tokens of each finished request.",
        labels=MODEL,
        buckets=TOKEN_BUCKETS,
    ),
    _m(
        "request_params_max_tokens",
        HISTOGRAM,
        "tokens",
        "max_tokens of each request the engine accepted.",
        labels=MODEL,
        buckets=TOKEN_BUCKETS,
    ),
    # KV cache and scheduling
    _m("kv_cache_blocks", GAUGE, "blocks", "KV-cache blocks the engine allocated.", labels=MODEL),
    _m("kv_cache_free_blocks", GAUGE, "blocks", "KV-cache blocks not held by any request.", labels=MODEL),
    _m("kv_cache_usage_perc", GAUGE, "ratio", "Share of KV-cache blocks in use, 0 to 1.", labels=MODEL),
    _m(
        "num_preemptions_total",
        COUNTER,
        "preemptions",
        "Running requests preempted (blocks freed, recomputed later) because the KV cache ran out.",
        labels=MODEL,
    ),
    _m(
        "prefix_cache_queries_total",
        COUNTER,
        "tokens",
        "Tokens of requests looked up in the prefix cache at their first admission (0 with the cache off).",
        labels=MODEL,
    ),
    _m(
        "prefix_cache_hits_total",
        COUNTER,
        "tokens",
        "Of the queried tokens, those whose KV was found cached (not prefilled); hit rate = hits / queries.",
        labels=MODEL,
    ),
    _m(
        "batch_size",
        HISTOGRAM,
        "requests",
        "Requests scheduled in each engine step.",
        labels=MODEL,
        buckets=BATCH_BUCKETS,
    ),
    # Speculative decoding (vLLM's spec_decode_* names; declared at its first draft: on by default)
    _m(
        "spec_decode_num_drafts_total",
        COUNTER,
        "drafts",
        "Drafts verified: decoding steps of a request that carried n-gram draft tokens.",
        labels=MODEL,
        only_with="--speculative-config",
    ),
    _m(
        "spec_decode_num_draft_tokens_total",
        COUNTER,
        "tokens",
        "Draft tokens proposed and verified.",
        labels=MODEL,
        only_with="--speculative-config",
    ),
    _m(
        "spec_decode_num_accepted_tokens_total",
        COUNTER,
        "tokens",
        "Draft tokens accepted (each saves a step); acceptance rate = accepted / draft tokens.",
        labels=MODEL,
        only_with="--speculative-config",
    ),
    _m(
        "spec_decode_num_accepted_tokens_per_pos_total",
        COUNTER,
        "tokens",
        "Accepted draft tokens by position in the draft (0 = the first); per-position acceptance rate = this "
        "/ num_drafts.",
        labels=MODEL + ("position",),
        only_with="--speculative-config",
    ),
    # Structured output
    _m(
        "structured_output_compile_time_seconds",
        HISTOGRAM,
        "seconds",
        "Compile time of each structured-output grammar (JSON schema, regex, choice, grammar) actually "
        "compiled; requests served from the compile cache are not observed.",
        labels=MODEL,
        buckets=GRAMMAR_COMPILE_BUCKETS,
    ),
    _m(
        "structured_output_mask_time_seconds",
        HISTOGRAM,
        "seconds",
        "Time per engine step spent filling the token masks of its requests with a grammar (all rows "
        "together); steps without such requests are not observed.",
        labels=MODEL,
        buckets=GRAMMAR_MASK_BUCKETS,
    ),
)

GATEWAY_METRICS: tuple[MetricSpec, ...] = (
    _m(
        "http_requests_total",
        COUNTER,
        "requests",
        "HTTP requests the gateway answered, by route and status.",
        GATEWAY,
        labels=("method", "route", "status"),
    ),
    _m(
        "http_request_duration_seconds",
        HISTOGRAM,
        "seconds",
        "From the gateway receiving an HTTP request to the end of its response (whole stream), by route.",
        GATEWAY,
        labels=("method", "route"),
        buckets=LATENCY_BUCKETS,
    ),
    _m(
        "http_requests_in_progress",
        GAUGE,
        "requests",
        "HTTP requests the gateway is answering now.",
        GATEWAY,
        labels=("method", "route"),
    ),
    _m(
        "global_scheduler_events_total",
        COUNTER,
        "events",
        "Global scheduler (--scheduler-name global) events of this instance, by event: submitted, rejected, "
        "expired, executed (= executed_own + executed_stolen), resumed (runs continuing a request another "
        "instance began), withdrawn (in-process starts undone), reaped_leases, dead_instances.",
        GATEWAY,
        labels=("event",),
        only_with="--scheduler-name global",
    ),
)

# Counted by the launcher's supervision (launcher/restart_counter.py), which writes them to a text file the
# gateway's /metrics appends; absent when the gateway runs without the launcher.
LAUNCHER_METRICS: tuple[MetricSpec, ...] = (
    _m(
        "engine_restarts_total",
        COUNTER,
        "restarts",
        "Restarts of tritonserver by the launcher after the engine died or wedged, by cause: "
        "tritonserver_died, engine_died (the llm_engine stub), rank_died (a tensor-parallel rank worker), "
        "engine_wedged (no step finished within --engine-step-timeout while requests were in flight), "
        "restart_failed (a restart whose models did not come back).",
        LAUNCHER,
        labels=("cause",),
    ),
)

ALL_METRICS: tuple[MetricSpec, ...] = ENGINE_METRICS + GATEWAY_METRICS + LAUNCHER_METRICS

