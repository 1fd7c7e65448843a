"""How many math threads the native kernels use, chosen per step by measuring.

A decode step of a few rows is memory-bound: one thread streams most of the bandwidth two reach. Served, the
serving path (gateway, tritonserver, the detokenizer: ~1.7 ms of CPU per streamed token) runs on the same
cores, and a team thread it preempts stalls its partners at the next of the pass's ~10 barriers per layer. So
on a 2-core box one math thread served 140 tok/s at concurrency 1 where two served 114, while at concurrency 8
(a compute-bound step) two were 1.26x one (docs/serving-perf.md). Offline, with nothing else running, two
threads win at every size. Which team is fastest depends on the machine, the load beside the engine and the
step's size, so the engine measures it: `TeamTuner` runs each candidate team size for blocks of
consecutive steps, per bucket of the number of requests a step carries, keeps the median step period
(step start to the next step's start: everything the engine waits for, the other processes included) of
each block, runs the candidate with the lowest, and tries the others now and then.

The kernels compute every row the same bits whatever the team (work is split by output columns and rows,
never inside a dot product; tests/engine/test_thread_team.py), so the choice changes speed only.
"""

from __future__ import annotations

import logging
import math
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
BLOCK = 16  # consecutive steps of a bucket run with one team size: its effect on the other processes shows
SETTLE = 3  # a block's first steps (the other processes still adjusting to the change) are not counted
EXPLORE_EVERY = 6  # at least this many blocks between two that try a candidate other than the fastest
EXPLORE_LOSS = 0.01  # ... and more: exploring a candidate x % slower every n blocks costs x / n; keep it 1 %
EXPLORE_MAX = 64  # but look again at least this often (the load beside the engine changes)
MARGIN = 0.03  # a smaller team must be this much faster than the whole team to run instead (no flapping)
KEEP = 3  # a candidate's estimate: the median of its last KEEP block medians
IDLE_GAP = 4.0  # a gap after a step this many times its duration is the engine idling, not its loop


@dataclass
class _Bucket:
    key: int  # the largest number of requests of a step in it
    blocks: dict[int, deque[float]] = field(default_factory=dict)  # team size -> its last block medians
    size: int = 0  # the team size of the block running
    periods: list[float] = field(default_factory=list)  # the running block's step periods
    steps: int = 0  # steps in the running block
    count: int = 0  # blocks finished
    best: int = 0  # the candidate last found fastest (0: not yet known)
    explore_at: int = 0  # the block count at which the next other candidate is tried
    explored: int = 0  # exploration blocks so far (round robin over the others)


def _bucket(n: int) -> int:
    """1, 2, 3-4, 5-8, ... requests share a bucket (its upper bound)."""
    return 1 << max(0, (n - 1).bit_length())


class TeamTuner:
    """Chooses `team.size` before each step (`begin`) from the measured periods of earlier steps.

    Algorithm: steps are bucketed by how many requests they carry (1, 2, 3-4, ...; a step with more than
    MAX_TUNED_ROWS rows, a long prefill chunk, always runs the whole team). Within a bucket, BLOCK consecutive
    steps run with one team size, because what one thread fewer buys is the other processes' progress (the
    serving path catching up on a free core), which a single step amid the others' would not show. The period
    of a step (its start to the next step's start) is charged to its block when the next step begins (when
    the gap between the step's end and the next start is over IDLE_GAP x its duration the engine idled, and
    the sample is dropped). A finished block's median period, without its first SETTLE steps, is the
    candidate's sample; its estimate is the median of its last KEEP samples (medians, not means: one slow
    step or block must not decide). Every candidate first runs two blocks (alternating); then the one with
    the lowest estimate runs (a smaller team only when it is MARGIN faster than the whole team), and now and
    then a block runs the next other candidate (round robin), so a change in the load beside the engine is
    noticed: every EXPLORE_EVERY blocks when the candidates are close, less often the further behind the
    others are (a candidate x slower is tried every x / EXPLORE_LOSS blocks, at most EXPLORE_MAX apart), so
    exploring costs about EXPLORE_LOSS of the throughput. Candidates: the whole team and one
    thread fewer (the core left to the serving path), and half the team with more than 4 threads."""

    def __init__(self, team: ThreadTeam, clock: object = time.perf_counter) -> None:
        self.team = team
        self._clock = clock
        n = team.max
        self.candidates = tuple(sorted({n, max(1, n - 1), *((n // 2,) if n > 4 else ())}, reverse=True))
        self._buckets: dict[int, _Bucket] = {}
        self._last: tuple[_Bucket, float] | None = None  # the bucket and start of the step running
        self._end = 0.0  # when the last step's work ended

    @property
    def tuning(self) -> bool:
        return len(self.candidates) > 1

    def begin(self, rows: int, requests: int = 1) -> int:
        """Called at the start of a step of `rows` rows of `requests` requests: sets and returns the team
        size it runs with."""
        now = self._clock()  # type: ignore[operator]
        if self._last is not None:
            self._charge(*self._last, now)
            self._last = None
        if not self.tuning or rows > MAX_TUNED_ROWS:
            self.team.size = self.team.max
            return self.team.size
        key = _bucket(max(1, requests))
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(key, size=self.candidates[0])
        if b.steps >= BLOCK:
            self._finish_block(b)
        b.steps += 1
        self._last = (b, now)
        self.team.size = b.size
        return b.size

    def end(self) -> None:
        """Called when the step's work (forward, LM head, sampling) is done."""
        self._end = self._clock()  # type: ignore[operator]

    def _charge(self, b: _Bucket, start: float, now: float) -> None:
        if self._end < start or now - self._end > IDLE_GAP * (self._end - start):
            return  # the step never ended (an error) or the engine idled after it
        if b.steps > SETTLE:
            b.periods.append(now - start)

    def _finish_block(self, b: _Bucket) -> None:
        """Record the finished block's median period; choose the next block's team size."""
        if b.periods:
            b.blocks.setdefault(b.size, deque(maxlen=KEEP)).append(statistics.median(b.periods))
        b.periods, b.steps = [], 0
        b.count += 1
        b.size = self._choose(b)

    def _choose(self, b: _Bucket) -> int:
        short = [c for c in self.candidates if len(b.blocks.get(c, ())) < 2]
        if short:
            return short[b.count % len(short)]
        estimate = {c: statistics.median(b.blocks[c]) for c in self.candidates}
        full = self.candidates[0]
        best = min(self.candidates, key=lambda c: estimate[c] * (1.0 if c == full else 1.0 + MARGIN))
        if best != b.best:
            b.best = best
            periods = ", ".join(f"{c}: {estimate[c] * 1e3:.2f} ms" for c in self.candidates)
            log.info(
                "steps of up to %d requests now run %d math threads (step periods %s)", b.key, best, periods
            )
        others = [c for c in self.candidates if c != best]
        if b.count >= b.explore_at:
            b.explored += 1
            gap = min(estimate[c] for c in others) / estimate[best] - 1.0
            b.explore_at = b.count + min(EXPLORE_MAX, max(EXPLORE_EVERY, math.ceil(gap / EXPLORE_LOSS)))
            return others[b.explored % len(others)]
        return best

    def snapshot(self) -> dict[int, dict[int, float]]:
        """Per requests bucket: each candidate's estimated step period (s) so far."""
        buckets = sorted(self._buckets.items())
        return {k: {c: statistics.median(p) for c, p in b.blocks.items()} for k, b in buckets}
