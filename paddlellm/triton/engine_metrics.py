"""Engine-side Prometheus metrics, exported through Triton's python-backend metrics API.

The llm_engine stub measures what only it knows (queue, prefill and decode times, KV blocks, batch sizes) and
publishes it with `pb_utils.MetricFamily` (COUNTER, GAUGE, HISTOGRAM: all supported by Triton 2.51's python
backend), so it appears on tritonserver's --metrics-port, where the gateway re-exposes it.

Every metric operation of the python backend is an IPC round trip to tritonserver (measured: 0.08 ms per
observe, 0.18-0.19 ms per set or increment), far too slow for the engine loop thread, whose sinks must not
block. So the loop thread only derives the values (a few subtractions) and queues operations; one metrics
thread applies them, at most every APPLY_PERIOD_S (what queued meanwhile is one batch: a counter's increments
summed, a gauge's last value; applied per step, the round trips woke tritonserver several times a step and
the thread took ~3 % of a core at 32 streams), except that a change of the requests in flight is applied at
once (the launcher's watchdog needs it). Gauges are queued only when their value changes.

Who calls what:
- Triton's thread: `request_received`, `request_accepted`, `request_rejected` (from execute()).
- The engine loop thread: `output` for every RequestOutput, `tick(engine, after_step)` before every step and
  after every finished request, which reads EngineStats (gauges) and, once per step, the batch size, and
  drains the structured-output timings the engine recorded since (grammar compiles, which run on the
  compiler's threads, and each step's mask fill).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from paddlellm.engine.outputs import RequestOutput
from paddlellm.protocol.metric_names import COUNTER, ENGINE_METRICS, GAUGE, HISTOGRAM, PREFIX, MetricSpec

if TYPE_CHECKING:
    from paddlellm.engine.core import EngineStats, GrammarTimings

log = logging.getLogger(__name__)

SUCCESS_REASONS = ("stop", "length", "abort")
APPLY_PERIOD_S = 0.2  # Prometheus scrapes every few seconds: 0.2 s late is not seen
IN_FLIGHT = ("num_requests_running", "num_requests_waiting")  # applied at once (launcher/watchdog.py)


def _n(short: str) -> str:
    return PREFIX + short


class MetricsBackend(Protocol):
    """Applies one operation ("inc" | "set" | "observe", or "declare": create the series, value untouched)
    to the metric `name` with these label values."""

    def apply(self, op: str, name: str, labels: tuple[str, ...], value: float) -> None: ...

    def close(self) -> None: ...


class StatsSource(Protocol):
    """What `tick` reads: an LLMEngine (the loop thread's own)."""

    def stats(self) -> EngineStats: ...

    def has_unfinished(self) -> bool: ...

    def take_grammar_timings(self) -> GrammarTimings: ...


class TritonMetricsBackend:
    """pb_utils.MetricFamily per spec, created up front; one Metric per label set, created on first use.

    Families must outlive their Metric objects (Triton refuses operations otherwise), so both are kept here
    and `close` drops the metrics first."""

    def __init__(self, pb: Any, specs: tuple[MetricSpec, ...] = ENGINE_METRICS) -> None:
        kinds = {
            COUNTER: pb.MetricFamily.COUNTER,
            GAUGE: pb.MetricFamily.GAUGE,
            HISTOGRAM: pb.MetricFamily.HISTOGRAM,
        }
        self._specs = {s.name: s for s in specs}
        self._families = {
            s.name: pb.MetricFamily(name=s.name, description=s.help, kind=kinds[s.kind]) for s in specs
        }
        self._metrics: dict[tuple[str, tuple[str, ...]], Any] = {}

    def _metric(self, name: str, labels: tuple[str, ...]) -> Any:
        key = (name, labels)
        metric = self._metrics.get(key)
        if metric is None:
            spec = self._specs[name]
            kw: dict[str, Any] = {"labels": dict(zip(spec.labels, labels, strict=True))}
            if spec.kind == HISTOGRAM:
                kw["buckets"] = [float(b) for b in spec.buckets]
            metric = self._metrics[key] = self._families[name].Metric(**kw)
        return metric

    def apply(self, op: str, name: str, labels: tuple[str, ...], value: float) -> None:
        metric = self._metric(name, labels)
        if op == "declare":
            return
        if op == "inc":
            metric.increment(value)
        elif op == "set":
            metric.set(value)
        else:
            metric.observe(value)

    def close(self) -> None:
        self._metrics.clear()
        self._families.clear()


class NullMetricsBackend:
    def apply(self, op: str, name: str, labels: tuple[str, ...], value: float) -> None:
        pass

    def close(self) -> None:
        pass


_Op = tuple[str, str, tuple[str, ...], float]


class EngineMetrics:
    def __init__(
        self,
        backend: MetricsBackend,
        log_line: Callable[[str], None] | None = None,
        model_name: str = "default",
        period_s: float = APPLY_PERIOD_S,
    ) -> None:
        """`log_line` writes the one INFO line per finished request (Triton's logger in the stub);
        `period_s`: the least time between two batches of operations (flush and close cut it short)."""
        self.backend = backend
        self.model_name = model_name
        self.period_s = period_s
        self._hurry = threading.Event()
        self._log_line = log_line or log.info
        self._queue: queue.SimpleQueue[list[_Op] | threading.Event | None] = queue.SimpleQueue()
        self._gauges: dict[str, float] = {}  # last value queued per gauge and engine total (loop thread)
        self._step_pending = False  # a step ran (or is about to) whose batch size is not recorded yet
        self._thread = threading.Thread(target=self._run, name="paddlellm-metrics", daemon=True)
        self._thread.start()

    @classmethod
    def for_backend(cls, pb: Any) -> EngineMetrics:
        """Triton metrics and Triton's INFO log when `pb` has them (a real stub); otherwise no metrics and
        Python logging (fakes in tests)."""
        if not hasattr(pb, "MetricFamily"):
            return cls(NullMetricsBackend())
        logger = getattr(pb, "Logger", None)
        return cls(TritonMetricsBackend(pb), logger.log_info if logger is not None else None)

    def bind(self, model_name: str) -> None:
        """The label every engine metric carries (the served model name); set before the first request.
        Declares every series, so all of them show (at 0) from the start: rate() needs the zero."""
        self.model_name = model_name or "default"
        ops: list[_Op] = []
        for spec in ENGINE_METRICS:
            if spec.only_with:
                continue  # a feature's metrics (speculative decoding): declared by tick once it reports
            for extra in [(r,) for r in SUCCESS_REASONS] if "finished_reason" in spec.labels else [()]:
                ops.append(("declare", spec.name, extra, 0.0))
        self._put(ops)

    # ------------------------------------------------------------------ Triton's thread

    def request_received(self) -> None:
        self._put([("inc", _n("requests_number_total"), (), 1.0)])

    def request_accepted(self, max_tokens: int) -> None:
        self._put([("observe", _n("request_params_max_tokens"), (), float(max_tokens))])

    def request_rejected(self) -> None:
        self._put([("inc", _n("request_failure_total"), (), 1.0)])

    # ------------------------------------------------------------------ engine loop thread

    def output(self, out: RequestOutput) -> None:
        """Per output: generated tokens; at the first token: TTFT, queue and prefill time, prompt tokens; at
        the end: the finish counters, the remaining histograms, and the request's log line."""
        ops: list[_Op] = []
        n_new = len(out.new_token_ids)
        if n_new:
            ops.append(("inc", _n("generation_tokens_total"), (), float(n_new)))
        t = out.timings
        if n_new and out.num_output_tokens == n_new and t is not None and t.first_token is not None:
            ops.append(("inc", _n("prompt_tokens_total"), (), float(out.num_prompt_tokens)))
            ops.append(("observe", _n("time_to_first_token_seconds"), (), t.first_token - t.arrival))
            if t.first_scheduled is not None:
                ops.append(("observe", _n("request_queue_time_seconds"), (), t.first_scheduled - t.arrival))
                ops.append(
                    ("observe", _n("request_prefill_time_seconds"), (), t.first_token - t.first_scheduled)
                )
        if out.finished:
            ops.extend(self._finished_ops(out))
            ops.append(("log", _request_line(out), (), 0.0))
        if ops:
            self._put(ops)

    def _finished_ops(self, out: RequestOutput) -> list[_Op]:
        reason = out.finish_reason or "error"
        if reason not in SUCCESS_REASONS:
            return [("inc", _n("request_failure_total"), (), 1.0)]
        ops: list[_Op] = [("inc", _n("request_success_total"), (reason,), 1.0)]
        ops.append(("observe", _n("request_prompt_tokens"), (), float(out.num_prompt_tokens)))
        ops.append(("observe", _n("request_generation_tokens"), (), float(out.num_output_tokens)))
        t = out.timings
        if t is None or t.finished is None:
            return ops
        ops.append(("observe", _n("e2e_request_latency_seconds"), (), t.finished - t.arrival))
        if t.first_scheduled is not None:
            ops.append(("observe", _n("request_inference_time_seconds"), (), t.finished - t.first_scheduled))
        if t.first_token is not None:
            decode = t.finished - t.first_token
            ops.append(("observe", _n("request_decode_time_seconds"), (), decode))
            if out.num_output_tokens >= 2:
                tpot = decode / (out.num_output_tokens - 1)
                ops.append(("observe", _n("time_per_output_token_seconds"), (), tpot))
        return ops

    def tick(self, engine: StatsSource, after_step: bool) -> None:
        """Gauges from EngineStats, and each step's batch size exactly once.

        The loop runs `before_step` -> (step if the engine has unfinished work); finished outputs are
        delivered after a step (or an abort). A step is therefore pending from a `before_step` tick that
        saw unfinished work until the next `before_step` tick, which records it; an after-step tick
        records it early only when the engine went idle (no `before_step` follows until new work comes).
        `last_batch_size` changes only in schedule(), so reading it late is exact."""
        stats = engine.stats()
        unfinished = engine.has_unfinished()
        ops: list[_Op] = []
        if self._step_pending and (not after_step or not unfinished):
            self._step_pending = False
            if stats.last_batch_size > 0:
                ops.append(("observe", _n("batch_size"), (), float(stats.last_batch_size)))
        if not after_step:
            self._step_pending = unfinished
        total = stats.num_total_blocks
        used = total - stats.num_free_blocks
        urgent = False
        for short, value in (
            ("num_requests_running", stats.num_running),
            ("num_requests_waiting", stats.num_waiting),
            ("kv_cache_blocks", total),
            ("kv_cache_free_blocks", stats.num_free_blocks),
            ("kv_cache_usage_perc", used / total if total else 0.0),
        ):
            if self._gauges.get(short) != value:
                self._gauges[short] = value
                ops.append(("set", _n(short), (), float(value)))
                # the launcher's watchdog reads these: a wedge right after requests arrive must show them
                urgent = urgent or short in IN_FLIGHT
        # Counters the engine keeps as running totals: increment by what they grew since the last tick.
        for short, total in (
            ("num_preemptions_total", stats.num_preemptions),
            ("prefix_cache_queries_total", stats.prefix_cache_queries),
            ("prefix_cache_hits_total", stats.prefix_cache_hits),
        ):
            grown = total - self._gauges.get(short, 0)
            if grown > 0:
                self._gauges[short] = total
                ops.append(("inc", _n(short), (), float(grown)))
        ops.extend(self._spec_ops(stats))
        grammar = engine.take_grammar_timings()
        for short, values in (
            ("structured_output_compile_time_seconds", grammar.compile_seconds),
            ("structured_output_mask_time_seconds", grammar.mask_seconds),
        ):
            ops.extend(("observe", _n(short), (), v) for v in values)
        if ops:
            self._put(ops)
        if urgent:
            self._hurry.set()

    def _spec_ops(self, stats: EngineStats) -> list[_Op]:
        """Speculative decoding's counters (engine running totals) as increments; nothing when it is off."""
        if not stats.spec_accepted_per_position:
            return []
        ops: list[_Op] = []
        totals = [
            ("spec_decode_num_drafts_total", (), stats.spec_num_drafts),
            ("spec_decode_num_draft_tokens_total", (), stats.spec_num_draft_tokens),
            ("spec_decode_num_accepted_tokens_total", (), stats.spec_num_accepted_tokens),
        ]
        for j, n in enumerate(stats.spec_accepted_per_position):
            totals.append(("spec_decode_num_accepted_tokens_per_pos_total", (str(j),), n))
        for short, labels, total in totals:
            key = short + "".join(labels)
            if key not in self._gauges:  # first sight: show the series at 0 (rate() needs the zero)
                self._gauges[key] = 0
                ops.append(("declare", _n(short), labels, 0.0))
            grown = total - self._gauges[key]
            if grown > 0:
                self._gauges[key] = total
                ops.append(("inc", _n(short), labels, float(grown)))
        return ops

    # ------------------------------------------------------------------ metrics thread

    def _put(self, ops: list[_Op]) -> None:
        self._queue.put(ops)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every operation queued so far is applied (tests)."""
        done = threading.Event()
        self._queue.put(done)
        self._hurry.set()
        return done.wait(timeout)

    def _run(self) -> None:
        """Apply queued operations in order. Whatever queued up meanwhile is taken as one batch in which
        increments of one series are summed and only the last set of a gauge is kept: fewer IPC round
        trips under load, same totals."""
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            ops: list[_Op] = []
            events: list[threading.Event] = []
            for item in batch:
                if item is None:
                    stopping = True
                elif isinstance(item, threading.Event):
                    events.append(item)
                else:
                    ops.extend(item)
            self._apply(_coalesce(ops))
            for event in events:
                event.set()
            if not stopping and self.period_s > 0:
                self._hurry.wait(self.period_s)  # let the next operations gather into one batch
                self._hurry.clear()

    def _apply(self, ops: list[_Op]) -> None:
        for op, name, labels, value in ops:
            try:
                if op == "log":
                    self._log_line(name)
                else:
                    self.backend.apply(op, name, (self.model_name, *labels), value)
            except Exception:  # noqa: BLE001 - a metric failure must not stop the others
                log.exception("metric operation %s %s failed", op, name)

    def close(self, timeout: float = 5.0) -> None:
        """Apply what is queued, stop the thread, release Triton's metric objects."""
        self._queue.put(None)
        self._hurry.set()
        self._thread.join(timeout)
        self.backend.close()


def _coalesce(ops: list[_Op]) -> list[_Op]:
    """Sum the increments of each series and keep each gauge's last value; declares, observations and log
    lines stay as they are, in order (declares come first anyway: bind runs before any request). Counters
    and gauges go last: a reader who sees them at their final values sees the batch's observations too."""
    incs: dict[tuple[str, tuple[str, ...]], float] = {}
    sets: dict[tuple[str, tuple[str, ...]], float] = {}
    rest: list[_Op] = []
    for op in ops:
        kind, name, labels, value = op
        if kind == "inc":
            incs[(name, labels)] = incs.get((name, labels), 0.0) + value
        elif kind == "set":
            sets.pop((name, labels), None)  # re-insert: dict order = order of last set
            sets[(name, labels)] = value
        else:
            rest.append(op)
    return (
        [op for op in rest if op[0] == "declare"]
        + [op for op in rest if op[0] != "declare"]
        + [("inc", n, lab, v) for (n, lab), v in incs.items()]
        + [("set", n, lab, v) for (n, lab), v in sets.items()]
    )


def _request_line(out: RequestOutput) -> str:
    """The one INFO line per finished request: ids, counts and engine timings; never the prompt text."""
    parts = [
        f"request {out.request_id} finished: reason={out.finish_reason or 'error'}",
        f"prompt_tokens={out.num_prompt_tokens} output_tokens={out.num_output_tokens}",
    ]
    t = out.timings
    if t is not None:
        if t.first_token is not None:
            parts.append(f"ttft={t.first_token - t.arrival:.3f}s")
        if t.finished is not None:
            parts.append(f"total={t.finished - t.arrival:.3f}s")
        if t.first_scheduled is not None:
            parts.append(f"queue={t.first_scheduled - t.arrival:.3f}s")
    if out.error is not None:
        parts.append(f"error={type(out.error).__name__}")
    return " ".join(parts)
