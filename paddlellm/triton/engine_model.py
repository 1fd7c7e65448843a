"""llm_engine's logic (decoupled): execute() validates and enqueues; everything else happens on threads.

Threads and their jobs:
- Triton's thread calls `execute()`: parse each request, register a `_Stream`, `loop.add(...)`; errors go
  straight back as that request's only (FINAL) response. Abort requests (`protocol.ABORT_PARAMETER`) call
  `loop.abort` for the live request with the same id.
- The engine loop thread steps the engine and calls each request's sink with a RequestOutput. The sink
  only decides what the response carries and queues it (sinks must not block the loop).
- A poller thread checks `is_cancelled()` of every live request every `cancel_poll_s` and aborts the
  cancelled ones (each check is an IPC round trip: on the loop thread they stalled the engine ~1 % of
  the time at 32 streams).
- One sender thread builds the queued responses (tensors, and the `logprobs` JSON of requests that asked:
  paddlellm/triton/logprobs_json.py) and sends them in order, FINAL on the last one of each request.

The detokenizer is stateless, so every response carries the last few already-emitted ids in front of
this step's ids (`window_ids`, `prefix_len`); `_Stream.context` keeps them, seeded with the `resume_ids`
of a resumed request.

Metrics (paddlellm/triton/engine_metrics.py): execute() counts requests, the sink hands every output to
`EngineMetrics.output`, and `EngineMetrics.tick` reads the engine's stats (and drains its structured-output
compile and mask timings) before every step and after every finished request; a metrics thread applies them
to Triton's metric families.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from paddlellm.config import EngineConfig
from paddlellm.engine.outputs import RequestOutput, RequestTimings
from paddlellm.errors import EngineDead, EngineError, InvalidRequest
from paddlellm.sampling import SamplingParams
from paddlellm.text.incremental import DEFAULT_CONTEXT
from paddlellm.triton import adapter
from paddlellm.triton.engine_metrics import EngineMetrics
from paddlellm.triton.error_responses import error_response, send_error
from paddlellm.triton.logprobs_json import LogprobsJson, TokenLogprob
from paddlellm.triton.stream_pacer import StreamPacer
from paddlellm.vision.image_inputs import ImageInputs

log = logging.getLogger(__name__)

# Already-emitted ids sent in front of each step's ids; paddlellm/text/incremental.py says how many the
# pure detokenize step needs (at least 4) and picks its default with margin.
DETOKENIZER_CONTEXT = DEFAULT_CONTEXT


class Loop(Protocol):
    """What the adapter needs of paddlellm.engine.loop.EngineLoop."""

    def add(
        self,
        request_id: str,
        prompt_ids: Sequence[int],
        sampling_params: SamplingParams,
        sink: Callable[[RequestOutput], None],
        resume_ids: Sequence[int] = (),
        images: ImageInputs | None = None,
    ) -> Any: ...

    def abort(self, request_id: str) -> None: ...

    def healthy(self) -> bool: ...

    def stop(self, timeout: float | None = 30.0) -> None: ...


LoopFactory = Callable[[Callable[[], None]], Loop]
"""Builds and starts the loop, given the hook it must run before every step (cancellation polling)."""


@dataclass
class _Stream:
    request_id: str
    request: Any
    sender: Any
    interval: int = 0  # SamplingParams.stream_interval: tokens per response after the first; 0: the pacer's
    final_only: bool = False  # not SamplingParams.stream: one response at the end
    echo: tuple[int, ...] = ()  # prompt ids the first response's text starts with (SamplingParams.echo)
    context: deque[int] = field(default_factory=lambda: deque(maxlen=DETOKENIZER_CONTEXT))
    pending: list[int] = field(default_factory=list)  # ids held back until `interval` of them are ready
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)  # their entries (requests that asked)
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None  # until the next response carries them
    sent_tokens: bool = False
    abort_sent: bool = False


class EngineModel:
    def __init__(
        self,
        pb: Any,
        make_loop: LoopFactory,
        cancel_poll_s: float = 0.25,
        metrics: EngineMetrics | None = None,
        pacer: StreamPacer | None = None,
        logprobs: LogprobsJson | None = None,
    ) -> None:
        """`metrics`: default Triton's metric families when `pb` has them (a real stub), else none.
        `pacer`: the automatic stream interval (streams with stream_interval 0). `logprobs`: writes the
        `logprobs` output (its vocabulary: the checkpoint's tokenizer; default none, tokens "")."""
        self.pb = pb
        self.pacer = pacer if pacer is not None else StreamPacer()
        self.logprobs = logprobs if logprobs is not None else LogprobsJson()
        self.cancel_poll_s = cancel_poll_s
        self._stopping = threading.Event()
        self.metrics = metrics if metrics is not None else EngineMetrics.for_backend(pb)
        self._engine: Any = None  # the loop's engine, for stats (None for loops that have none)
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        # (stream, builds the response, flags); None stops the sender.
        self._outbox: queue.SimpleQueue[tuple[_Stream, Callable[[], Any], int] | None] = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_loop, name="paddlellm-triton-sender", daemon=True)
        self._sender.start()
        self.loop = make_loop(self._before_step)
        self._engine = getattr(self.loop, "engine", None)
        config = getattr(self._engine, "config", None)
        if config is not None:
            self.metrics.bind(config.served_model_name)
        if self._engine is not None:  # the loop is idle until the first request: its gauges from the start
            self.metrics.tick(self._engine, after_step=True)
        self._poller = threading.Thread(target=self._poll_loop, name="paddlellm-cancel-poll", daemon=True)
        self._poller.start()

    # ------------------------------------------------------------------------ Triton's thread

    def execute(self, requests: Sequence[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            request_id = request.request_id() or f"anon-{uuid.uuid4().hex}"
            received = False
            try:
                if adapter.is_abort(request):
                    self.loop.abort(request_id)
                    sender.send(flags=self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    continue
                self.metrics.request_received()
                received = True
                inp = adapter.read_engine_input(self.pb, request)
                sampling_params = inp.sampling_params
                stream = _Stream(
                    request_id,
                    request,
                    sender,
                    interval=sampling_params.stream_interval,
                    final_only=not sampling_params.stream,
                    echo=inp.prompt_ids if sampling_params.echo and not inp.resume_ids else (),
                )
                # A resumed request: its first window starts with the last ids the cut run sent, exactly
                # as if this engine had emitted them (a character split across the cut comes out whole).
                stream.context.extend(inp.resume_ids)
                with self._lock:
                    if request_id in self._streams:
                        raise InvalidRequest(f"request id {request_id!r} is already in use", "request_id")
                    self._streams[request_id] = stream
                try:
                    accepted = self.loop.add(
                        request_id,
                        inp.prompt_ids,
                        sampling_params,
                        lambda out, s=stream: self._sink(s, out),
                        resume_ids=inp.resume_ids,
                        images=inp.images,  # checked against the prompt's placeholders by the engine
                    )
                except BaseException:
                    with self._lock:
                        self._streams.pop(request_id, None)
                    raise
                self.metrics.request_accepted(accepted.max_tokens or 0)
            except Exception as e:  # noqa: BLE001 - every failure becomes this request's error response
                if received:
                    self.metrics.request_rejected()
                send_error(self.pb, sender, e)
        return None

    def healthy(self) -> bool:
        return self.loop.healthy()

    def finalize(self) -> None:
        """Stop the poller and the loop (it ends in-flight requests with an error, which is sent), then the
        sender."""
        self._stopping.set()
        self._poller.join(timeout=10)
        self.loop.stop()
        self._outbox.put(None)
        self._sender.join(timeout=10)
        self.metrics.close()

    # ------------------------------------------------------------------------ engine loop thread

    def _before_step(self) -> None:
        self.pacer.step(time.monotonic())
        if self._engine is not None:
            self.metrics.tick(self._engine, after_step=False)

    def _sink(self, stream: _Stream, out: RequestOutput) -> None:
        self.metrics.output(out)
        if out.finished:
            with self._lock:
                self._streams.pop(stream.request_id, None)
            if self._engine is not None:
                self.metrics.tick(self._engine, after_step=True)
        if out.finish_reason == "error":
            err = out.error
            if not isinstance(err, EngineError):
                err = EngineDead(f"engine failed: {err}")
            final = self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
            self._outbox.put((stream, functools.partial(error_response, self.pb, err), final))
            return
        if out.prompt_logprobs is not None:
            stream.prompt_logprobs = out.prompt_logprobs  # the next response sent carries them
        if not out.new_token_ids and not out.finished:
            return  # e.g. a prefill chunk: nothing to tell the client yet
        if out.new_token_ids and not stream.final_only:
            self.pacer.output()
        coalesced = self._coalesce(stream, out)
        if coalesced is None:
            return
        for piece in self._capped(stream, coalesced):
            self._send(stream, piece)

    def _send(self, stream: _Stream, out: RequestOutput) -> None:
        final = self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL if out.finished else 0
        stats = _stats_json(out.timings) if out.finished else ""
        echo, stream.echo = stream.echo, ()
        prompt_logprobs, stream.prompt_logprobs = stream.prompt_logprobs, None
        context = tuple(stream.context)
        stream.context.extend((*echo, *out.new_token_ids))

        def build(out: RequestOutput = out) -> Any:  # on the sender thread
            logprobs = self.logprobs.build(out.logprobs, prompt_logprobs)
            return adapter.engine_response(self.pb, out, context, stats, echo, logprobs)

        self._outbox.put((stream, build, final))

    def _coalesce(self, stream: _Stream, out: RequestOutput) -> RequestOutput | None:
        """Stream interval: the first tokens go out at once (time to first token), then ids are held until
        `interval` of them are ready (the pacer's current interval for streams on auto); the last output
        flushes them (and is the only one when `final_only`). None: nothing to send yet. A request that asked
        for logprobs has its held ids' entries held with them, in the same order.

        Every response costs the serving path the same whatever it carries: Triton's two hops, the
        detokenizer and the gateway's SSE chunk each wake a process, and on a small CPU those wake-ups
        preempt the engine's math threads (docs/serving-perf.md). An interval of k divides that cost by k at
        the price of k-token bursts."""
        ready = len(stream.pending) + len(out.new_token_ids)
        interval = stream.interval or self.pacer.interval
        if not out.finished and (stream.final_only or (stream.sent_tokens and ready < interval)):
            stream.pending.extend(out.new_token_ids)
            if out.logprobs is not None:
                stream.pending_logprobs.extend(out.logprobs)
            return None
        stream.sent_tokens = stream.sent_tokens or ready > 0
        if not stream.pending:
            return out
        ids = (*stream.pending, *out.new_token_ids)
        stream.pending.clear()
        if out.logprobs is None:
            return dataclasses.replace(out, new_token_ids=ids)
        logprobs = (*stream.pending_logprobs, *out.logprobs)
        stream.pending_logprobs.clear()
        return dataclasses.replace(out, new_token_ids=ids, logprobs=logprobs)

    def _capped(self, stream: _Stream, out: RequestOutput) -> list[RequestOutput]:
        """An explicit interval k (a request's max_streaming_response_tokens, or --stream-interval k) is also
        a cap, as FastDeploy's field says ("at most k tokens per chunk"): a run of more tokens from one step
        (speculative decoding accepts several) goes out as k-token responses, and a shorter remainder is
        held like any other until k are ready (or the request ends). Auto (0) sends a run whole."""
        k, ids = stream.interval, out.new_token_ids
        if not k or len(ids) <= k or stream.final_only:
            return [out]
        cut = len(ids) if out.finished else len(ids) - len(ids) % k
        pieces, done = [], out.num_output_tokens - len(ids)
        for start in range(0, cut, k):
            part = ids[start : min(start + k, cut)]
            done += len(part)
            last = out.finished and start + k >= cut
            lp = out.logprobs[start : start + len(part)] if out.logprobs is not None else None
            pieces.append(
                dataclasses.replace(
                    out,
                    new_token_ids=part,
                    num_output_tokens=done,
                    logprobs=lp,
                    finished=last,
                    finish_reason=out.finish_reason if last else None,
                    timings=out.timings if last else None,
                )
            )
        stream.pending.extend(ids[cut:])
        if out.logprobs is not None:
            stream.pending_logprobs.extend(out.logprobs[cut:])
        return pieces

    # ------------------------------------------------------------------------ poller thread

    def _poll_loop(self) -> None:
        while not self._stopping.wait(max(self.cancel_poll_s, 0.001)):
            try:
                self._poll_cancelled()
            except Exception:  # noqa: BLE001 - a failed check must not stop the polling
                log.exception("polling for cancelled requests failed")

    def _poll_cancelled(self) -> None:
        """Abort requests whose client went away. Only direct calls see this: through the ensemble the
        detokenizer sends an abort request (protocol.ABORT_PARAMETER)."""
        with self._lock:
            streams = [s for s in self._streams.values() if not s.abort_sent]
        for stream in streams:
            if stream.request.is_cancelled():
                stream.abort_sent = True
                log.info("request %s was cancelled by its client; aborting it", stream.request_id)
                self.loop.abort(stream.request_id)

    # ------------------------------------------------------------------------ sender thread

    def _send_loop(self) -> None:
        while (item := self._outbox.get()) is not None:
            stream, build, flags = item
            try:
                try:
                    response = build()
                except Exception as e:  # noqa: BLE001 - the request gets the error, with its flags
                    log.exception("could not build a response for request %s", stream.request_id)
                    response = error_response(self.pb, e)
                stream.sender.send(response, flags=flags)
            except Exception:  # noqa: BLE001 - a closed stream must not stop the others
                log.exception("could not send a response for request %s", stream.request_id)


def engine_loop_factory(config: EngineConfig) -> LoopFactory:
    """The real loop: build the engine (loads weights, spawns rank workers) and start its thread."""

    def make(before_step: Callable[[], None]) -> Loop:
        from paddlellm.engine.core import LLMEngine  # here, not at import: the stub imports this module first
        from paddlellm.engine.loop import EngineLoop

        return EngineLoop(LLMEngine.create(config), before_step=before_step).start()

    return make


def _stats_json(t: RequestTimings | None) -> str:
    """Engine-side timings of a finished request, in seconds."""
    if t is None:
        return ""
    stats: dict[str, float] = {}
    if t.first_scheduled is not None:
        stats["queue_s"] = t.first_scheduled - t.arrival
    if t.first_token is not None:
        stats["ttft_s"] = t.first_token - t.arrival
    if t.finished is not None:
        stats["e2e_s"] = t.finished - t.arrival
    return json.dumps({k: round(v, 6) for k, v in stats.items()}, separators=(",", ":"))
