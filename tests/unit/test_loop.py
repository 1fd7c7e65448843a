"""EngineLoop: a background thread owning the engine; thread-safe add/abort; failures end every request."""

import threading
import time

import pytest

from paddlellm.engine.loop import EngineLoop
from paddlellm.errors import EngineDead, InvalidRequest, Overloaded
from paddlellm.sampling import SamplingParams
from tests.unit.engine_fakes import collect, make_engine, prompt


class Collector:
    def __init__(self):
        self.outputs = []
        self.done = threading.Event()
        self.finished: dict[str, object] = {}
        self.expected = 0
        self._lock = threading.Lock()

    def __call__(self, out):
        with self._lock:
            self.outputs.append(out)
            if out.finished:
                self.finished[out.request_id] = out
                if len(self.finished) >= self.expected:
                    self.done.set()


@pytest.fixture
def loops():
    started = []

    def make(engine, **kw):
        loop = EngineLoop(engine, **kw).start()
        started.append(loop)
        return loop

    yield make
    for loop in started:
        loop.stop()


def _requests(n):
    return {
        f"r{i}": (prompt(5 + 3 * i, i), SamplingParams(max_tokens=6 + i, temperature=0.5, seed=i))
        for i in range(n)
    }


def test_concurrent_adds_from_many_threads_match_offline(loops):
    reqs = _requests(24)
    offline, _ = make_engine(num_blocks=40, max_num_seqs=6)
    for rid, (ids, p) in reqs.items():
        offline.add_request(rid, ids, p)
    want = collect(offline.run_until_done())

    engine, _ = make_engine(num_blocks=40, max_num_seqs=6)
    loop = loops(engine)
    sink = Collector()
    sink.expected = len(reqs)
    items = list(reqs.items())
    threads = [
        threading.Thread(
            target=lambda chunk=items[k::4]: [loop.add(r, ids, p, sink) for r, (ids, p) in chunk]
        )
        for k in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sink.done.wait(10)
    assert collect(sink.outputs) == want
    assert all(o.finish_reason == "length" for o in sink.finished.values())
    deadline = time.monotonic() + 60  # a hang guard
    while engine.stats().num_free_blocks != 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.stats().num_free_blocks == 40 and loop.num_in_flight == 0 and loop.healthy()


def test_validation_errors_are_synchronous(loops):
    engine, _ = make_engine(max_model_len=32, scheduler_max_size=1, max_num_seqs=1)
    loop = loops(engine)
    with pytest.raises(InvalidRequest, match="40 tokens, but max_model_len is 32") as e:
        loop.add("a", prompt(40), SamplingParams(), Collector())
    assert e.value.param == "prompt"
    with pytest.raises(InvalidRequest, match=r"plus max_tokens \(5\) is 35 tokens"):
        loop.add("b", prompt(30), SamplingParams(max_tokens=5), Collector())
    gate, held = threading.Event(), threading.Event()

    def hold() -> None:
        held.set()
        gate.wait()

    loop_blocked = EngineLoop(make_engine(scheduler_max_size=2)[0], before_step=hold)
    loop_blocked.start()
    try:
        loop_blocked.add("x", prompt(4), SamplingParams(), Collector())
        assert held.wait(60)  # x is now held by the loop thread, in before_step (60 s: a hang guard)
        loop_blocked.add("y", prompt(4), SamplingParams(), Collector())
        with pytest.raises(Overloaded, match=r"queue is full \(2 requests waiting"):
            loop_blocked.add("z", prompt(4), SamplingParams(), Collector())
        with pytest.raises(InvalidRequest, match="request id 'y' is already in use"):
            loop_blocked.add("y", prompt(4), SamplingParams(), Collector())
    finally:
        gate.set()
        loop_blocked.stop()


def test_abort_from_another_thread_frees_blocks(loops):
    engine, _ = make_engine()
    gate = threading.Event()
    loop = loops(engine, before_step=lambda: gate.wait(5))
    sink = Collector()
    sink.expected = 2
    loop.add("long", prompt(20), SamplingParams(max_tokens=500, ignore_eos=True), sink)
    loop.add("short", prompt(8, 1), SamplingParams(max_tokens=3), sink)
    gate.set()
    while not [o for o in sink.outputs if o.request_id == "long"]:
        time.sleep(0.001)
    threading.Thread(target=loop.abort, args=("long",)).start()
    assert sink.done.wait(10)
    assert sink.finished["long"].finish_reason == "abort"
    assert sink.finished["short"].finish_reason == "length"
    assert sink.finished["long"].num_output_tokens < 500
    loop.abort("long")  # already gone: ignored
    deadline = time.monotonic() + 60  # a hang guard
    while engine.has_unfinished() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.stats().num_free_blocks == 64 and loop.healthy()


def test_step_failure_ends_every_request_with_an_error(loops):
    engine, _ = make_engine(fail_on_call=4, max_num_seqs=2)
    loop = loops(engine)
    sink = Collector()
    sink.expected = 4
    for i in range(4):
        loop.add(f"r{i}", prompt(6, i), SamplingParams(max_tokens=50), sink)
    assert sink.done.wait(10)
    for out in sink.finished.values():
        assert out.finish_reason == "error" and isinstance(out.error, EngineDead)
    assert (
        sum(o.num_output_tokens for o in sink.finished.values()) > 0
    )  # counts survive into the error output
    assert not loop.healthy() and isinstance(loop.last_error, EngineDead)
    with pytest.raises(EngineDead, match="not running: fake worker died"):
        loop.add("late", prompt(4), SamplingParams(), Collector())


def test_unexpected_exception_becomes_engine_dead(loops):
    engine, ex = make_engine()

    def boom(sched):
        raise ValueError("kernel exploded")

    ex.execute = boom
    loop = loops(engine)
    sink = Collector()
    sink.expected = 1
    loop.add("a", prompt(4), SamplingParams(), sink)
    assert sink.done.wait(10)
    err = sink.finished["a"].error
    assert isinstance(err, EngineDead) and "kernel exploded" in str(err)
    assert not loop.healthy()


def test_a_failing_sink_does_not_stop_the_loop(loops):
    engine, _ = make_engine()
    loop = loops(engine)

    def bad_sink(out):
        raise RuntimeError("client gone")

    loop.add("bad", prompt(4), SamplingParams(max_tokens=100, ignore_eos=True), bad_sink)
    good = Collector()
    good.expected = 1
    loop.add("good", prompt(4, 1), SamplingParams(max_tokens=5), good)
    assert good.done.wait(10) and good.finished["good"].finish_reason == "length"
    deadline = time.monotonic() + 60  # a hang guard
    while engine.has_unfinished() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not engine.has_unfinished() and engine.stats().num_free_blocks == 64 and loop.healthy()


def test_idle_loop_sleeps_and_stop_ends_in_flight_requests():
    engine, ex = make_engine()
    gate = threading.Event()
    loop = EngineLoop(engine, before_step=lambda: gate.wait(5)).start()
    time.sleep(0.1)
    assert ex.calls == [] and loop.healthy()
    sink = Collector()
    sink.expected = 1
    loop.add("a", prompt(4), SamplingParams(max_tokens=100), sink)
    time.sleep(0.05)
    threading.Timer(0.1, gate.set).start()
    loop.stop()
    assert sink.done.wait(1)
    assert sink.finished["a"].finish_reason == "error" and not loop.healthy()
    with pytest.raises(EngineDead, match="the engine is not running: stopped"):
        loop.add("b", prompt(4), SamplingParams(), Collector())
    assert ex.shut_down


def test_stress_adds_and_aborts_from_many_threads(loops):
    engine, _ = make_engine(num_blocks=24, max_num_seqs=8, max_num_batched_tokens=64)
    loop = loops(engine)
    sink = Collector()
    sink.expected = 200
    reqs = {
        f"s{i}": (prompt(1 + (i * 7) % 90, i), SamplingParams(max_tokens=1 + i % 40, seed=i))
        for i in range(200)
    }
    items = list(reqs.items())

    def worker(k):
        for n, (rid, (ids, p)) in enumerate(items[k::8]):
            loop.add(rid, ids, p, sink)
            if n % 3 == 0:
                loop.abort(items[(8 * n + k + 5) % 200][0])  # maybe not added yet, maybe finished: both fine

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sink.done.wait(30)
    reasons = {o.finish_reason for o in sink.finished.values()}
    assert reasons <= {"length", "abort"} and len(sink.finished) == 200
    tokens = collect(sink.outputs)
    for rid, out in sink.finished.items():
        assert len(tokens.get(rid, [])) == out.num_output_tokens
        if out.finish_reason == "length":
            assert out.num_output_tokens == reqs[rid][1].max_tokens
    deadline = time.monotonic() + 60  # a hang guard
    while engine.has_unfinished() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.stats().num_free_blocks == 24 and loop.num_in_flight == 0 and loop.healthy()
