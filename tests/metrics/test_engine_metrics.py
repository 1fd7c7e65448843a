"""Engine-side metrics in llm_engine's adapter: the real EngineModel and EngineLoop over the fake executor,
with a recording backend (exact totals) and a fake of Triton's MetricFamily API (what the stub calls)."""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from paddlellm import protocol as p
from paddlellm.engine.loop import EngineLoop
from paddlellm.engine.outputs import RequestOutput, RequestTimings
from paddlellm.errors import InvalidRequest
from paddlellm.protocol.metric_names import ENGINE_METRICS, HISTOGRAM, PREFIX
from paddlellm.structured.spec import StructuredSpec
from paddlellm.triton.engine_metrics import EngineMetrics, TritonMetricsBackend
from paddlellm.triton.engine_model import EngineModel
from tests.unit.engine_fakes import FakeCompiler, FakeGrammar, make_engine, prompt

WAIT_S = 10.0
GRAMMAR_HISTOGRAMS = ("structured_output_compile_time_seconds", "structured_output_mask_time_seconds")


class MemoryBackend:
    def __init__(self) -> None:
        self.counters: dict[tuple[str, tuple[str, ...]], float] = defaultdict(float)
        self.gauges: dict[tuple[str, tuple[str, ...]], float] = {}
        self.observations: dict[tuple[str, tuple[str, ...]], list[float]] = defaultdict(list)
        self.closed = False
        self.declared: set[tuple[str, tuple[str, ...]]] = set()

    def apply(self, op: str, name: str, labels: tuple[str, ...], value: float) -> None:
        assert name.startswith(PREFIX)
        if op == "declare":
            self.declared.add((name, labels))
        elif op == "inc":
            assert value >= 0
            self.counters[(name, labels)] += value
        elif op == "set":
            self.gauges[(name, labels)] = value
        else:
            assert op == "observe", op
            self.observations[(name, labels)].append(value)

    def close(self) -> None:
        self.closed = True

    def counter(self, short: str, *labels: str) -> float:
        return self.counters.get((PREFIX + short, ("m", *labels)), 0.0)

    def gauge(self, short: str) -> float:
        return self.gauges[(PREFIX + short, ("m",))]

    def observed(self, short: str) -> list[float]:
        return self.observations.get((PREFIX + short, ("m",)), [])


def engine_request(pb: ModuleType, rid: str, ids: list[int], sampling: dict[str, Any]):
    return pb.InferenceRequest(
        inputs=[
            pb.Tensor(p.INPUT_IDS, np.asarray(ids, np.int32)),
            pb.Tensor(p.SAMPLING, np.array([json.dumps(sampling).encode()], np.object_)),
            pb.Tensor(p.RESUME_IDS, np.zeros([0], np.int32)),
        ],
        request_id=rid,
    )


def start_model(pb: ModuleType, backend: MemoryBackend, **engine_kw: Any) -> tuple[EngineModel, Any]:
    holder: dict[str, Any] = {}

    def factory(before_step):
        engine, _ = make_engine(served_model_name="m", **engine_kw)
        holder["engine"] = engine
        return EngineLoop(engine, before_step=before_step).start()

    model = EngineModel(pb, factory, cancel_poll_s=0.0, metrics=EngineMetrics(backend))
    return model, holder["engine"]


def wait_all(senders: list[Any]) -> None:
    for s in senders:
        assert s.closed.wait(WAIT_S), "no FINAL response"


@pytest.mark.parametrize("max_num_seqs", [8, 2])
def test_totals_histograms_and_gauges_after_a_known_workload(pb: ModuleType, max_num_seqs: int) -> None:
    backend = MemoryBackend()
    model, engine = start_model(pb, backend, max_num_seqs=max_num_seqs)
    try:
        assert backend is model.metrics.backend
        model.metrics.flush()
        blocks = engine.stats().num_total_blocks
        assert backend.gauge("kv_cache_blocks") == blocks  # known before any request
        assert backend.gauge("kv_cache_free_blocks") == blocks
        # a feature's metrics (only_with: --speculative-config) show once it reports (test_spec_metrics.py)
        assert {n for n, _ in backend.declared} == {s.name for s in ENGINE_METRICS if not s.only_with}
        assert (PREFIX + "request_success_total", ("m", "abort")) in backend.declared
        work = [(5 + 3 * i, 2 + i % 7) for i in range(20)]  # (prompt tokens, max_tokens), ignore_eos
        requests = [
            engine_request(pb, f"r{i}", prompt(n, i), {"max_tokens": k, "ignore_eos": True, "temperature": 0})
            for i, (n, k) in enumerate(work)
        ]
        model.execute(requests)
        wait_all([r.get_response_sender() for r in requests])
        assert model.metrics.flush()
    finally:
        model.finalize()
    prompts, outputs = sum(n for n, _ in work), sum(k for _, k in work)
    assert backend.counter("requests_number_total") == 20
    assert backend.counter("request_success_total", "length") == 20
    assert backend.counter("request_failure_total") == 0
    assert backend.counter("prompt_tokens_total") == prompts
    assert backend.counter("generation_tokens_total") == outputs
    for spec in ENGINE_METRICS:
        short = spec.name[len(PREFIX) :]
        if short in GRAMMAR_HISTOGRAMS:
            assert backend.observed(short) == [], short  # no request asked for a grammar: nothing observed
        elif spec.kind == HISTOGRAM and short != "batch_size":
            assert len(backend.observed(short)) == 20, spec.name
    assert sorted(backend.observed("request_prompt_tokens")) == sorted(float(n) for n, _ in work)
    assert sorted(backend.observed("request_generation_tokens")) == sorted(float(k) for _, k in work)
    assert sorted(backend.observed("request_params_max_tokens")) == sorted(float(k) for _, k in work)
    # No chunking or preemption here: a request is in one step per output token.
    batches = backend.observed("batch_size")
    assert sum(batches) == outputs and max(batches) == min(max_num_seqs, 20)
    assert backend.counter("num_preemptions_total") == 0
    assert backend.counter("prefix_cache_queries_total") == prompts  # no two prompts share a first token
    assert backend.counter("prefix_cache_hits_total") == 0
    for g in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
        assert backend.gauge(g) == 0, g
    assert backend.gauge("kv_cache_free_blocks") == blocks
    # Observed at different moments (first schedule, first token, finish), so their orders differ between
    # requests; q <= ttft <= e2e per request implies the same between the i-th smallest of each.
    for ttft, e2e, q in zip(
        sorted(backend.observed("time_to_first_token_seconds")),
        sorted(backend.observed("e2e_request_latency_seconds")),
        sorted(backend.observed("request_queue_time_seconds")),
        strict=True,
    ):
        assert 0 <= q <= ttft <= e2e
    assert backend.closed


def test_prefix_cache_queries_and_hits_count_tokens(pb: ModuleType) -> None:
    """Three requests one after another, sharing 40 tokens (2 full blocks of 16): the 2nd and 3rd hit 32."""
    backend = MemoryBackend()
    model, engine = start_model(pb, backend)
    try:
        for i in range(3):
            req = engine_request(pb, f"r{i}", prompt(40) + [7 + i], {"max_tokens": 2, "temperature": 0})
            model.execute([req])
            wait_all([req.get_response_sender()])
        assert model.metrics.flush()
    finally:
        model.finalize()
    assert backend.counter("prefix_cache_queries_total") == 3 * 41
    assert backend.counter("prefix_cache_hits_total") == 2 * 32
    assert backend.gauge("kv_cache_free_blocks") == engine.stats().num_total_blocks  # cached blocks are free


def test_waiting_requests_show_in_the_gauges_while_they_wait(pb: ModuleType) -> None:
    backend = MemoryBackend()
    model, _ = start_model(pb, backend, max_num_seqs=1)
    try:
        requests = [
            engine_request(pb, f"w{i}", prompt(6, i), {"max_tokens": 40, "ignore_eos": True})
            for i in range(3)
        ]
        model.execute(requests)
        seen_waiting = 0.0
        deadline = time.monotonic() + WAIT_S
        while not requests[-1].get_response_sender().closed.is_set() and time.monotonic() < deadline:
            model.metrics.flush()
            seen_waiting = max(seen_waiting, backend.gauges.get((PREFIX + "num_requests_waiting", ("m",)), 0))
            time.sleep(0.001)
        wait_all([r.get_response_sender() for r in requests])
        model.metrics.flush()
    finally:
        model.finalize()
    assert seen_waiting >= 1
    assert backend.gauge("num_requests_waiting") == 0 and backend.gauge("num_requests_running") == 0
    assert max(backend.observed("batch_size")) == 1


def test_rejected_aborted_and_preempted_requests(pb: ModuleType) -> None:
    backend = MemoryBackend()
    # 4 blocks of 16 tokens: two requests that grow to 40 tokens each cannot both stay.
    model, _ = start_model(pb, backend, num_blocks=4, kv_cache_ratio=1.0)
    try:
        bad = engine_request(pb, "bad", prompt(5), {"max_tokens": 0})
        too_long = engine_request(pb, "long", prompt(10), {"max_tokens": 5000})
        grow = [
            engine_request(pb, f"g{i}", prompt(20, i), {"max_tokens": 20, "ignore_eos": True}) for i in (1, 2)
        ]
        model.execute([bad, too_long, *grow])
        abort = pb.InferenceRequest(
            inputs=[], request_id="g2", parameters=json.dumps({"paddlellm_abort": True})
        )
        wait_all([r.get_response_sender() for r in grow[:1]])
        model.execute([abort])
        wait_all([r.get_response_sender() for r in grow])
        model.metrics.flush()
    finally:
        model.finalize()
    assert backend.counter("requests_number_total") == 4  # the abort control request is not one
    assert backend.counter("request_failure_total") == 2
    assert backend.counter("request_success_total", "length") >= 1
    finished = backend.counter("request_success_total", "length") + backend.counter(
        "request_success_total", "abort"
    )
    assert finished == 2
    assert backend.counter("num_preemptions_total") >= 1
    assert len(backend.observed("request_params_max_tokens")) == 2
    assert backend.gauge("kv_cache_usage_perc") == 0 and backend.gauge("num_requests_running") == 0


def test_structured_output_compile_and_mask_times(pb: ModuleType) -> None:
    """Three grammar requests (each compiled: a cache miss of 2 ms in the fake compiler) and two without: one
    compile observation per grammar request, one mask observation per step that had grammar rows; a compile
    error is the request's INVALID_ARG response naming the field, and a failure in the counters."""
    backend = MemoryBackend()
    compiler = FakeCompiler(FakeGrammar((5, 6, 7)), auto=True)
    model, _ = start_model(pb, backend, grammar_compiler=compiler)
    spec = StructuredSpec.regex("x+", param="guided_regex").to_dict()
    try:
        with_grammar = [
            engine_request(pb, f"g{i}", prompt(6, i), {"max_tokens": 8, "structured_outputs": spec})
            for i in range(3)
        ]
        plain = [engine_request(pb, f"p{i}", prompt(6, 5 + i), {"max_tokens": 4}) for i in range(2)]
        model.execute(with_grammar + plain)
        wait_all([r.get_response_sender() for r in with_grammar + plain])
        compiler.auto = False
        bad = engine_request(pb, "bad", prompt(6), {"max_tokens": 8, "structured_outputs": spec})
        model.execute([bad])
        _, future = compiler.pending[0]
        future.set_exception(InvalidRequest("cannot compile regex: unclosed group", param="guided_regex"))
        wait_all([bad.get_response_sender()])
        assert model.metrics.flush()
    finally:
        model.finalize()
    assert backend.observed("structured_output_compile_time_seconds") == [0.002] * 3
    masks = backend.observed("structured_output_mask_time_seconds")
    assert 3 <= len(masks) <= 9 and all(t >= 0 for t in masks)  # 3 steps if the three ran together
    assert backend.counter("request_success_total", "stop") == 3
    assert backend.counter("request_success_total", "length") == 2
    assert backend.counter("request_failure_total") == 1
    (response,) = bad.get_response_sender().responses
    assert response.has_error() and response.error().code() == pb.TritonError.INVALID_ARG
    message = response.error().message()
    assert "param=guided_regex" in message and "unclosed group" in message


def test_one_info_line_per_finished_request_without_the_prompt(pb: ModuleType, caplog) -> None:
    lines: list[str] = []
    metrics = EngineMetrics(MemoryBackend(), lines.append)
    out = RequestOutput(
        "req-7",
        (5,),
        12,
        3,
        finished=True,
        finish_reason="stop",
        timings=RequestTimings(arrival=10.0, first_scheduled=10.5, first_token=11.0, finished=12.25),
    )
    metrics.output(RequestOutput("req-7", (4,), 12, 1, timings=out.timings))
    metrics.output(out)
    metrics.flush()
    metrics.close()
    assert lines == [
        "request req-7 finished: reason=stop prompt_tokens=12 output_tokens=3 "
        "ttft=1.000s total=2.250s queue=0.500s"
    ]
    # Without Triton's logger the line goes to Python logging at INFO.
    with caplog.at_level(logging.INFO, logger="paddlellm.triton.engine_metrics"):
        m = EngineMetrics.for_backend(object())
        m.output(out)
        m.flush()
        m.close()
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "req-7" in caplog.records[0].getMessage()


class FakeMetricFamily:
    """Triton's pb_utils.MetricFamily as the python backend defines it (kinds, Metric(labels, buckets))."""

    COUNTER, GAUGE, HISTOGRAM = "COUNTER", "GAUGE", "HISTOGRAM"
    created: list[FakeMetricFamily] = []

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name, self.description, self.kind = name, description, kind
        self.metrics: list[FakeMetric] = []
        FakeMetricFamily.created.append(self)

    def Metric(self, labels: dict[str, str], buckets: list[float] | None = None) -> FakeMetric:  # noqa: N802
        if (self.kind == "HISTOGRAM") != (buckets is not None):
            raise ValueError("Missing required buckets" if buckets is None else "Unexpected buckets found")
        m = FakeMetric(labels, buckets)
        self.metrics.append(m)
        return m


class FakeMetric:
    def __init__(self, labels: dict[str, str], buckets: list[float] | None) -> None:
        self.labels, self.buckets = labels, buckets
        self.calls: list[tuple[str, float]] = []

    def increment(self, v: float) -> None:
        self.calls.append(("increment", v))

    def set(self, v: float) -> None:
        self.calls.append(("set", v))

    def observe(self, v: float) -> None:
        self.calls.append(("observe", v))


def test_triton_backend_declares_every_engine_metric_with_its_kind_and_buckets() -> None:
    FakeMetricFamily.created = []
    pb = type("pb", (), {"MetricFamily": FakeMetricFamily})
    backend = TritonMetricsBackend(pb)
    families = {f.name: f for f in FakeMetricFamily.created}
    assert set(families) == {s.name for s in ENGINE_METRICS}
    for spec in ENGINE_METRICS:
        assert families[spec.name].kind == spec.kind.upper()
        assert families[spec.name].description == spec.help
    backend.apply("observe", PREFIX + "batch_size", ("m",), 3.0)
    backend.apply("observe", PREFIX + "batch_size", ("m",), 4.0)
    backend.apply("inc", PREFIX + "request_success_total", ("m", "stop"), 1.0)
    (hist,) = families[PREFIX + "batch_size"].metrics  # one Metric per label set, reused
    assert hist.labels == {"model_name": "m"} and hist.calls == [("observe", 3.0), ("observe", 4.0)]
    assert hist.buckets == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]
    (ok,) = families[PREFIX + "request_success_total"].metrics
    assert ok.labels == {"model_name": "m", "finished_reason": "stop"} and ok.calls == [("increment", 1.0)]
    backend.close()


def test_queued_operations_are_coalesced_without_changing_totals() -> None:
    from paddlellm.triton.engine_metrics import _coalesce

    g, c, h = PREFIX + "num_requests_running", PREFIX + "generation_tokens_total", PREFIX + "batch_size"
    ops = [
        ("inc", c, (), 1.0),
        ("set", g, (), 3.0),
        ("observe", h, (), 2.0),
        ("inc", c, (), 4.0),
        ("set", g, (), 0.0),
        ("log", "line", (), 0.0),
        ("observe", h, (), 5.0),
    ]
    assert _coalesce(ops) == [
        ("observe", h, (), 2.0),
        ("log", "line", (), 0.0),
        ("observe", h, (), 5.0),
        ("inc", c, (), 5.0),
        ("set", g, (), 0.0),
    ]


class _Source:
    """A StatsSource whose running count the test sets."""

    def __init__(self) -> None:
        self.running = 0

    def stats(self):  # noqa: ANN201
        from paddlellm.engine.core import EngineStats

        return EngineStats(self.running, 0, 10, 10, 0, self.running)

    def has_unfinished(self) -> bool:
        return self.running > 0

    def take_grammar_timings(self):  # noqa: ANN201
        from paddlellm.engine.core import GrammarTimings

        return GrammarTimings((), ())


def test_operations_wait_for_the_period_but_requests_in_flight_do_not() -> None:
    """Batches are applied at most every period_s; a change of the requests in flight (what the launcher's
    watchdog reads) is applied at once, with whatever queued before it."""
    backend, source = MemoryBackend(), _Source()
    metrics = EngineMetrics(backend, model_name="m", period_s=30.0)
    try:
        metrics.tick(source, after_step=True)
        deadline = time.monotonic() + WAIT_S
        while (PREFIX + "num_requests_running", ("m",)) not in backend.gauges and time.monotonic() < deadline:
            time.sleep(0.01)
        assert backend.gauge("num_requests_running") == 0
        metrics.request_received()  # the thread was idle: applied at once, and the period starts
        deadline = time.monotonic() + WAIT_S
        while backend.counter("requests_number_total") != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        metrics.request_received()
        time.sleep(0.3)
        assert backend.counter("requests_number_total") == 1  # the second is held for the period
        source.running = 1
        metrics.tick(source, after_step=False)
        deadline = time.monotonic() + WAIT_S
        while backend.gauge("num_requests_running") != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert backend.gauge("num_requests_running") == 1
        assert backend.counter("requests_number_total") == 2
    finally:
        metrics.close()
