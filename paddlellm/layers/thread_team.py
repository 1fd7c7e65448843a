"""How many math threads the native kernels use, chosen per step by measuring.

A decode step of a few rows is memory-bound: one thread streams most of the bandwidth two reach. Served, the
serving path (gateway, tritonserver, the detokenizer: ~1.7 ms of CPU per streamed token) runs on the same
cores, and a team thread it preempts stalls its partners at the next of the pass's ~10 barriers per layer. So
on a 2-core box one math thread served 140 tok/s at concurrency 1 where two served 114, while at concurrency 8
(a compute-bound step) two were 1.26x one (docs/serving-perf.md). Offline, with nothing else running, two
threads win at every size. Which team is fastest depends on the machine, the load beside the engine and the
step's size, so the engine measures it: `TeamTuner` keeps, per bucket of step rows, the recent step periods
(step start to the next step's start: everything the engine waits for, the other processes included) of
each candidate team size, runs the one with the lowest median, and tries the others now and then.

The kernels compute every row the same bits whatever the team (work is split by output columns and rows,
never inside a dot product; tests/engine/test_thread_team.py), so the choice changes speed only.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import deque
from dataclasses import dataclass, field

log = logging.getLogger("paddlellm.thread_team")


class ThreadTeam:
    """The team size every native kernel call of a step reads (`size`); `max` is the configured count."""

    def __init__(self, threads: int) -> None:
        if threads < 1:
            raise ValueError(f"a thread team needs at least one thread, got {threads}")
        self.max = threads
        self.size = threads

    def __repr__(self) -> str:
        return f"ThreadTeam(size={self.size}, max={self.max})"


def team_of(threads: int | ThreadTeam) -> ThreadTeam:
    """A fixed team for callers (tests, benchmarks) that give a thread count."""
    return threads if isinstance(threads, ThreadTeam) else ThreadTeam(threads)


# Steps larger than this always run the whole team (prefill chunks: compute-bound everywhere).
MAX_TUNED_ROWS = 64
EXPLORE_EVERY = 24  # one step in this many (per bucket) runs a candidate other than the fastest
WARMUP_SAMPLES = 5  # samples of each candidate before the fastest is trusted
WINDOW = 9  # a candidate's estimate: the median of its last WINDOW periods (robust to a slow first step)
IDLE_GAP = 4.0  # a gap after a step this many times its duration is the engine idling, not its loop


@dataclass
class _Bucket:
    key: int  # the largest step (rows) in it
    periods: dict[int, deque[float]] = field(default_factory=dict)  # team size -> its last WINDOW periods
    steps: int = 0
    best: int = 0  # the candidate last found fastest (0: not yet known)


def _bucket(rows: int) -> int:
    """1, 2, 3-4, 5-8, ... rows share a bucket (its upper bound)."""
    return 1 << max(0, (rows - 1).bit_length())


class TeamTuner:
    """Chooses `team.size` before each step (`begin`) from the measured periods of earlier steps.

    Algorithm: the period of a step (its start to the next step's start) is charged to the team size it ran
    with, in its rows bucket, when the next step begins; when the gap between the step's end (`end`) and the
    next start is over IDLE_GAP x the step's duration, the engine idled between them and the sample is
    dropped. A bucket first collects WARMUP_SAMPLES of every
    candidate (alternating), then runs the candidate whose last WINDOW periods have the lowest median
    (a median, not a mean: one slow step, a first call or a preemption by another process, must not
    decide), except that one step in
    EXPLORE_EVERY runs the next other candidate (round robin), so a change in the load beside the engine is
    noticed. Candidates: the whole team and one thread fewer (the core left to the serving path), and half
    the team on machines with more than 4 threads."""

    def __init__(self, team: ThreadTeam, clock: object = time.perf_counter) -> None:
        self.team = team
        self._clock = clock
        n = team.max
        self.candidates = tuple(sorted({n, max(1, n - 1), *((n // 2,) if n > 4 else ())}, reverse=True))
        self._buckets: dict[int, _Bucket] = {}
        self._last: tuple[int, int, float] | None = None  # (bucket, size, start) of the step running
        self._end = 0.0  # when the last step's work ended

    @property
    def tuning(self) -> bool:
        return len(self.candidates) > 1

    def begin(self, rows: int) -> int:
        """Called at the start of a step of `rows` rows: sets and returns the team size it runs with."""
        now = self._clock()  # type: ignore[operator]
        if self._last is not None:
            self._charge(*self._last, now)
        if not self.tuning or rows > MAX_TUNED_ROWS:
            self._last = None
            self.team.size = self.team.max
            return self.team.size
        key = _bucket(rows)
        b = self._buckets.setdefault(key, _Bucket(key))
        size = self._choose(b)
        b.steps += 1
        self._last = (key, size, now)
        self.team.size = size
        return size

    def end(self) -> None:
        """Called when the step's work (forward, LM head, sampling) is done."""
        self._end = self._clock()  # type: ignore[operator]

    def _choose(self, b: _Bucket) -> int:
        short = [c for c in self.candidates if len(b.periods.get(c, ())) < WARMUP_SAMPLES]
        if short:
            return short[b.steps % len(short)]
        median = {c: statistics.median(b.periods[c]) for c in self.candidates}
        best = min(self.candidates, key=lambda c: median[c])
        if best != b.best:
            b.best = best
            periods = ", ".join(f"{c}: {median[c] * 1e3:.2f} ms" for c in self.candidates)
            log.info("steps of up to %d rows now run %d math threads (step periods %s)", b.key, best, periods)
        if b.steps % EXPLORE_EVERY == 0:
            others = [c for c in self.candidates if c != best]
            return others[(b.steps // EXPLORE_EVERY) % len(others)]
        return best

    def _charge(self, key: int, size: int, start: float, now: float) -> None:
        if self._end < start or now - self._end > IDLE_GAP * (self._end - start):
            return  # the step never ended (an error) or the engine idled after it
        self._buckets[key].periods.setdefault(size, deque(maxlen=WINDOW)).append(now - start)

    def snapshot(self) -> dict[int, dict[int, float]]:
        """Per rows bucket: the median recent step period (s) of each candidate measured so far."""
        buckets = sorted(self._buckets.items())
        return {k: {c: statistics.median(p) for c, p in b.periods.items()} for k, b in buckets}
