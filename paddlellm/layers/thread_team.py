"""How many math threads the native kernels use, chosen per step by measuring.

A decode step of a few rows is memory-bound: one thread streams most of the bandwidth two reach. Served, the
serving path (gateway, tritonserver, the detokenizer: ~1.7 ms of CPU per streamed token) runs on the same
cores, and a team thread it preempts stalls its partners at the next of the pass's ~10 barriers per layer. So
on a 2-core box one math thread served 140 tok/s at concurrency 1 where two served 114, while at concurrency 8
(a compute-bound step) two were 1.26x one (docs/serving-perf.md). Offline, with nothing else running, two
threads win at every size. Which team is fastest depends on the machine, the load beside the engine and the
step's size, so the engine measures it: `TeamTuner` compares, per bucket of the number of requests a decode
step carries, blocks of consecutive steps run by each candidate team size, side by side in time, by their
median step period (step start to the next step's start: everything the engine waits for, the other
processes included), runs the faster, and tries the other now and then.

The kernels compute every row the same bits whatever the team (work is split by output columns and rows,
never inside a dot product; tests/engine/test_team_size_bits.py), so the choice changes speed only.
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


BLOCK = 16  # consecutive steps of a bucket run with one team size: its effect on the other processes shows
SETTLE = 3  # a block's first steps (the other processes still adjusting to the change) are not counted
KEEP = 3  # a candidate's standing: the median of its last KEEP trial ratios
FIRST_TRIALS = 2  # trials of each other candidate run back to back when a bucket is new
CLEARLY_SLOWER = 1.15  # ... unless the first ones all ran this much slower: then exploring waits as usual
EXPLORE_EVERY = 6  # at least this many blocks from one trial to the next
EXPLORE_LOSS = 0.01  # ... and more: a trial of a candidate x % slower every n blocks costs x / n; keep it 1 %
EXPLORE_MAX = 64  # but a trial at least this often (the load beside the engine changes)
MARGIN = 0.03  # a smaller team must be this much faster than the whole team to run instead (no flapping)
IDLE_GAP = 4.0  # a gap after a step this many times its duration is the engine idling, not its loop


@dataclass
class _Bucket:
    key: int  # the largest number of requests of a step in it
    incumbent: int  # the team size that runs
    size: int = 0  # the team size of the block running
    trial: int = 0  # the candidate under trial (0: none); its block runs first, then the incumbent's
    trial_median: float = 0.0  # the median period of the trial's candidate block
    ratios: dict[int, deque[float]] = field(default_factory=dict)  # candidate -> its period / incumbent's
    periods: list[float] = field(default_factory=list)  # the running block's step periods
    steps: int = 0  # steps in the running block
    count: int = 0  # blocks finished
    trials: int = 0  # trials finished
    next_trial: int = 0  # the block count at which the next trial starts


def _bucket(n: int) -> int:
    """1, 2, 3-4, 5-8, ... requests share a bucket (its upper bound)."""
    return 1 << max(0, (n - 1).bit_length())


class TeamTuner:
    """Chooses `team.size` before each step (`begin`) from the measured periods of earlier steps.

    Algorithm: decode steps (no prefill chunk: every request in it computes one known token, plus its
    draft) are bucketed by how many requests they carry (1, 2, 3-4, ...); a step with a prefill chunk runs
    the whole team (compute-bound) and is not measured. Within a bucket, BLOCK consecutive steps run with one
    team size, because what one thread fewer buys is the other processes' progress (the serving path
    catching up on a free core), which a single step amid the others' would not show. The period of a step
    (its start to the next step's start) is charged to its block when the next step begins (when the gap
    between the step's end and the next start is over IDLE_GAP x its duration the engine idled, and the
    sample is dropped); a block's value is the median period of its steps after the first SETTLE. The
    incumbent (first: the whole team) runs; a trial runs a block of another candidate and, right after it,
    a block of the incumbent: blocks next to each other in time see the same load and context lengths, so
    their ratio is what the candidate changes (blocks far apart are not comparable: a batch's contexts
    grow, requests come and go). A candidate whose median ratio over its last KEEP trials is below 1 - MARGIN
    (below 1 for the whole team) becomes the incumbent. A new bucket runs one block of the whole team, then
    FIRST_TRIALS of each candidate back to back (one each when those all ran CLEARLY_SLOWER); then trials come
    every EXPLORE_EVERY blocks while the candidates are close and less often the further behind they are (a
    candidate x slower every x / EXPLORE_LOSS blocks, at most EXPLORE_MAX apart), so exploring costs about
    EXPLORE_LOSS of the throughput. Candidates: the whole team and one
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

    def begin(self, requests: int, prefill: bool = False) -> int:
        """Called at the start of a step of `requests` requests (`prefill`: one of them computes a prompt
        chunk): sets and returns the team size it runs with."""
        now = self._clock()  # type: ignore[operator]
        if self._last is not None:
            self._charge(*self._last, now)
            self._last = None
        if not self.tuning or prefill:
            self.team.size = self.team.max
            return self.team.size
        key = _bucket(max(1, requests))
        b = self._buckets.get(key)
        if b is None:
            # the whole team first: a bucket a batch passes through briefly (requests finishing) is not
            # charged a trial block; trials start from its second block
            b = self._buckets[key] = _Bucket(key, incumbent=self.candidates[0], next_trial=1)
            self._start_block(b)
        elif b.steps >= BLOCK:
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
        """Close the running block (a trial's halves are compared) and start the next."""
        value = statistics.median(b.periods) if b.periods else None
        b.periods, b.steps = [], 0
        b.count += 1
        if b.trial and b.size == b.trial:  # the candidate's half: the incumbent's half follows
            if value is None:
                b.trial = 0
            else:
                b.trial_median = value
            self._start_block(b, then_incumbent=True)
            return
        if b.trial and value is not None:  # the incumbent's half: the trial is done
            self._judge(b, b.trial, b.trial_median / value)
        b.trial = 0
        self._start_block(b)

    def _start_block(self, b: _Bucket, then_incumbent: bool = False) -> None:
        if then_incumbent or b.count < b.next_trial:
            b.size = b.incumbent
            return
        others = [c for c in self.candidates if c != b.incumbent]
        b.trial = others[b.trials % len(others)]
        b.size = b.trial

    def _judge(self, b: _Bucket, candidate: int, ratio: float) -> None:
        """Record a trial's ratio (candidate's period / the incumbent's); promote the candidate if it has
        been faster; schedule the next trial."""
        ratios = b.ratios.setdefault(candidate, deque(maxlen=KEEP))
        ratios.append(ratio)
        b.trials += 1
        standing = statistics.median(ratios)
        need = 1.0 if candidate == self.candidates[0] else 1.0 - MARGIN
        if len(ratios) >= FIRST_TRIALS and standing < need:
            old = b.incumbent
            b.incumbent = candidate
            b.ratios = {old: deque([1.0 / standing], maxlen=KEEP)}
            log.info(
                "decode steps of up to %d requests now run %d math threads (%.1f %% shorter periods than %d)",
                b.key, candidate, 100.0 * (1.0 - standing), old,
            )  # fmt: skip
        others = len(self.candidates) - 1
        # A second early trial of a candidate the first showed far slower (one thread at a big batch: ~1.3x)
        # would cost the bucket's first ~100 steps ~5 % for nothing (served c=32 ran 75-82 % of offline in a
        # fresh stack's first window, 90-98 % later); such candidates go straight to the spaced schedule.
        decisive = b.trials >= others and all(min(r) >= CLEARLY_SLOWER for r in b.ratios.values())
        if b.trials < FIRST_TRIALS * others and not decisive:
            b.next_trial = b.count
            return
        behind = min((statistics.median(r) for c, r in b.ratios.items() if c != b.incumbent), default=1.0)
        wait = math.ceil(max(0.0, behind - 1.0) / EXPLORE_LOSS)
        b.next_trial = b.count + min(EXPLORE_MAX, max(EXPLORE_EVERY, wait))

    def snapshot(self) -> dict[int, tuple[int, dict[int, float]]]:
        """Per requests bucket: the incumbent team size and each other candidate's median trial ratio."""
        return {
            k: (b.incumbent, {c: statistics.median(r) for c, r in b.ratios.items()})
            for k, b in sorted(self._buckets.items())
        }
