"""EngineLoop: runs an LLMEngine on its own thread and hands each request's outputs to a callback (its sink).

Other threads only enqueue (add, abort); the loop thread alone touches the engine. It sleeps on a condition
while there is no work (no busy-wait). If a step fails (e.g. a worker died), every in-flight request gets a
final output with finish_reason "error", and the loop stops and reports unhealthy: a failure is never a hang.

Structured output: `add` starts the request's grammar compile (LLMEngine.compile_grammar, off this thread and
off the loop thread) and queues the add only when the compile is done, so other requests keep stepping
meanwhile. A compile that fails ends the request with that error (an InvalidRequest naming the spec's field)
before any token; an abort while compiling ends it with "abort" and the compile's result is dropped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

from paddlellm.engine.core import LLMEngine
from paddlellm.engine.outputs import RequestOutput
from paddlellm.errors import EngineDead, EngineError, InvalidRequest, Overloaded
from paddlellm.sampling import SamplingParams
from paddlellm.step_types import MultiModalPrompt
from paddlellm.vision.image_inputs import ImageInputs

if TYPE_CHECKING:
    from paddlellm.structured.compiler import CompiledGrammar

log = logging.getLogger(__name__)

Sink = Callable[[RequestOutput], None]  # runs on the loop thread: must be cheap and must not block


@dataclass
class _Live:
    sink: Sink
    num_prompt_tokens: int
    num_output_tokens: int = 0


@dataclass(frozen=True)
class _Add:
    """An add for the loop thread to apply: the request, its compiled grammar, or the compile's error."""

    request_id: str
    prompt: tuple[int, ...]
    params: SamplingParams
    resume: tuple[int, ...]
    grammar: CompiledGrammar | None = None
    error: EngineError | None = None
    mm: MultiModalPrompt | None = None  # its images, prepared on the caller's thread


class EngineLoop:
    def __init__(
        self,
        engine: LLMEngine,
        before_step: Callable[[], None] | None = None,
        name: str = "paddlellm-engine-loop",
    ) -> None:
        """`before_step` runs on the loop thread before every step (e.g. to poll client cancellation)."""
        self.engine = engine
        self._before_step = before_step
        self._cv = threading.Condition()
        self._adds: list[_Add] = []
        self._aborts: list[str] = []
        self._live: dict[str, _Live] = {}  # every request added and not yet finished; guarded by _cv
        self._compiling: dict[str, _Live] = {}  # of those, the ones whose grammar compiles; guarded by _cv
        self._error: EngineError | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> EngineLoop:
        self._thread.start()
        return self

    # ---------------------------------------------------------------- any thread

    def add(
        self,
        request_id: str,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        sink: Sink,
        resume_ids: Sequence[int] = (),
        images: ImageInputs | None = None,
    ) -> SamplingParams:
        """Queue a request. Raises InvalidRequest/Overloaded (and EngineDead once the loop is down)
        right here, so callers can answer synchronously; later outputs, errors too, go to `sink`.
        Returns the params as the request will run them (max_tokens resolved). `resume_ids`: continue a
        cut run after these ids (LLMEngine.add_request). With params.structured_outputs, the add is queued
        once its grammar compiled; a compile error goes to `sink` (module docstring). `images`: the
        prompt's images (checked against its placeholders here, off the loop thread)."""
        prompt = tuple(int(t) for t in prompt_ids)
        resume = tuple(int(t) for t in resume_ids)
        params = self.engine.validate(prompt, params, resume)  # reads only immutable sizes
        mm = self.engine.prepare_images(prompt, images)
        spec = params.structured_outputs
        with self._cv:
            if self._error is not None or self._stopping or not self._thread.is_alive():
                raise EngineDead(f"the engine is not running: {self._error or 'stopped'}")
            if request_id in self._live:
                raise InvalidRequest(f"request id {request_id!r} is already in use", param="request_id")
            max_size = self.engine.config.scheduler_max_size
            queued = self.engine.scheduler.num_waiting + len(self._adds) + len(self._compiling)
            if 0 < max_size <= queued:
                raise Overloaded(
                    f"the engine queue is full ({max_size} requests waiting; scheduler_max_size)"
                )
            live = self._live[request_id] = _Live(sink, len(prompt), len(resume))
            if spec is None:
                self._adds.append(_Add(request_id, prompt, params, resume, mm=mm))
                self._cv.notify()
            else:
                self._compiling[request_id] = live
        if spec is not None:
            try:
                future = self.engine.compile_grammar(spec)
            except BaseException:
                with self._cv:
                    self._compiling.pop(request_id, None)
                    self._live.pop(request_id, None)
                raise
            add = _Add(request_id, prompt, params, resume, mm=mm)
            future.add_done_callback(lambda f: self._compiled(live, add, f))
        return params

    def _compiled(self, live: _Live, add: _Add, future: Future[CompiledGrammar]) -> None:
        """On the compiler's thread (or add()'s, for a finished compile): queue the add, or its error,
        unless the request was aborted or the loop ended it meanwhile."""
        error = future.exception()
        if error is not None and not isinstance(error, EngineError):
            log.error("grammar compile of request %s failed", add.request_id, exc_info=error)
            error = EngineError(f"internal error compiling the grammar ({type(error).__name__})")
        with self._cv:
            if self._compiling.get(add.request_id) is not live:
                return
            del self._compiling[add.request_id]
            if error is None:
                add = _Add(
                    add.request_id, add.prompt, add.params, add.resume, grammar=future.result(), mm=add.mm
                )
            else:
                add = _Add(add.request_id, add.prompt, add.params, add.resume, error=error)
            self._adds.append(add)
            self._cv.notify()

    def abort(self, request_id: str) -> None:
        """Ask the loop to abort a request; its sink gets a final "abort" output. Unknown ids are ignored."""
        with self._cv:
            if request_id in self._live:
                self._compiling.pop(request_id, None)  # its compile's result will be dropped
                self._aborts.append(request_id)
                self._cv.notify()

    def healthy(self) -> bool:
        if self._error is not None or not self._thread.is_alive():
            return False
        try:
            self.engine.check_health()
        except EngineError:
            return False
        return True

    @property
    def last_error(self) -> EngineError | None:
        return self._error

    @property
    def num_in_flight(self) -> int:
        with self._cv:
            return len(self._live)

    def stop(self, timeout: float | None = 30.0, shutdown_engine: bool = True) -> None:
        """Finish the current step, end in-flight requests with an error, join the thread, and (by default)
        shut the engine's executor down (rank workers exit)."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if shutdown_engine:
            try:
                self.engine.shutdown()
            except Exception:
                log.exception("engine shutdown failed")

    # ---------------------------------------------------------------- loop thread

    def _run(self) -> None:
        engine = self.engine
        try:
            while True:
                with self._cv:
                    while not (self._stopping or self._adds or self._aborts or engine.has_unfinished()):
                        self._cv.wait()
                    if self._stopping:
                        break
                    adds, self._adds = self._adds, []
                    aborts, self._aborts = self._aborts, []
                for add in adds:
                    self._apply_add(add)
                for request_id in aborts:
                    out = engine.abort(request_id) or self._aborted_before_queued(request_id)
                    if out is not None:
                        self._deliver(out)
                if self._before_step is not None:
                    self._before_step()
                if engine.has_unfinished():
                    for out in engine.step():
                        self._deliver(out)
        except BaseException as e:  # noqa: BLE001 - any failure ends every request with an error
            err = (
                e
                if isinstance(e, EngineError)
                else EngineDead(f"engine step failed: {type(e).__name__}: {e}")
            )
            log.exception("engine loop failed; ending %d in-flight requests", len(self._live))
            self._fail_all(err, record=True)
            return
        self._fail_all(EngineDead("the engine was stopped"), record=False)

    def _apply_add(self, add: _Add) -> None:
        error = add.error
        if error is None:
            try:
                self.engine.add_request(
                    add.request_id, add.prompt, add.params, add.resume, add.grammar, add.mm
                )
                return
            except EngineError as e:  # state changed since add() checked (e.g. the queue filled up)
                error = e
        self._deliver(
            RequestOutput(
                add.request_id,
                (),
                len(add.prompt),
                len(add.resume),
                finished=True,
                finish_reason="error",
                error=error,
            )
        )

    def _aborted_before_queued(self, request_id: str) -> RequestOutput | None:
        """The final "abort" output of a live request the engine does not know: it was aborted while its
        grammar compiled (adds are applied before aborts, so any other live request is in the engine)."""
        with self._cv:
            live = self._live.get(request_id)
        if live is None:
            return None
        return RequestOutput(
            request_id,
            (),
            live.num_prompt_tokens,
            live.num_output_tokens,
            finished=True,
            finish_reason="abort",
        )

    def _deliver(self, out: RequestOutput) -> None:
        with self._cv:
            live = self._live.pop(out.request_id) if out.finished else self._live.get(out.request_id)
        if live is None:
            return
        live.num_output_tokens = out.num_output_tokens
        try:
            live.sink(out)
        except Exception:
            # A broken sink must not take the loop down: drop the request and free its blocks.
            log.exception("sink of request %s failed; aborting it", out.request_id)
            with self._cv:
                self._live.pop(out.request_id, None)
            if not out.finished:
                self.engine.abort(out.request_id)

    def _fail_all(self, err: EngineError, record: bool) -> None:
        with self._cv:
            if record:
                self._error = err
            self._stopping = True
            live, self._live = self._live, {}
            self._adds, self._aborts, self._compiling = [], [], {}
        for request_id, r in live.items():
            out = RequestOutput(
                request_id,
                (),
                r.num_prompt_tokens,
                r.num_output_tokens,
                finished=True,
                finish_reason="error",
                error=err,
            )
            try:
                r.sink(out)
            except Exception:
                log.exception("sink of request %s failed", request_id)
