"""TeamTuner: per bucket of requests per decode step, the team size that ran shorter step periods in trials
(a block of the candidate, then a block of the incumbent) runs; the other is still tried now and then, and
less often the slower it is; a smaller team needs a margin; slow steps, idle gaps and a slowly changing
load do not fool it; prefill steps always run the whole team."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from paddlellm.layers.thread_team import BLOCK, TeamTuner, ThreadTeam, team_of

Cost = dict[int, float] | Callable[[int, int], float]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(
    tuner: TeamTuner, clock: Clock, requests: int, cost: Cost, steps: int, prefill: bool = False
) -> list[int]:
    """`steps` back-to-back steps whose period is cost[team size] (or cost(size, step)); the sizes chosen."""
    chosen = []
    for i in range(steps):
        size = tuner.begin(requests, prefill)
        assert tuner.team.size == size
        chosen.append(size)
        period = cost(size, i) if callable(cost) else cost[size]
        clock.now += period * 0.8
        tuner.end()
        clock.now += period * 0.2
    return chosen


def blocks(chosen: list[int]) -> list[int]:
    """The team of each block (asserting a block never mixes teams)."""
    out = []
    for i in range(0, len(chosen) - BLOCK + 1, BLOCK):
        assert len(set(chosen[i : i + BLOCK])) == 1, chosen[i : i + BLOCK]
        out.append(chosen[i])
    return out


def test_candidates() -> None:
    assert TeamTuner(ThreadTeam(1)).candidates == (1,)
    assert TeamTuner(ThreadTeam(2)).candidates == (2, 1)
    assert TeamTuner(ThreadTeam(4)).candidates == (4, 3)
    assert TeamTuner(ThreadTeam(8)).candidates == (8, 7, 4)
    with pytest.raises(ValueError):
        ThreadTeam(0)
    team = ThreadTeam(3)
    assert team_of(team) is team and team_of(2).max == 2


@pytest.mark.parametrize("faster", [1, 2])
def test_the_faster_team_runs_most_blocks(faster: int) -> None:
    clock = Clock()
    tuner = TeamTuner(ThreadTeam(2), clock)
    chosen = blocks(run(tuner, clock, 1, {faster: 0.010, 3 - faster: 0.013}, BLOCK * 120))
    tail = chosen[10:]
    assert 0.9 <= tail.count(faster) / len(tail) < 1.0  # the other is still tried
    assert tuner.snapshot()[1][0] == faster


def test_a_much_slower_team_is_tried_rarely_but_tried() -> None:
    clock = Clock()
    tuner = TeamTuner(ThreadTeam(2), clock)
    chosen = blocks(run(tuner, clock, 32, {2: 0.047, 1: 0.067}, BLOCK * 300))
    tail = chosen[10:]
    assert 1 <= tail.count(1) <= len(tail) / 30  # 43 % slower: one block in ~43 (~1 % lost)


def test_a_clearly_slower_candidate_gets_one_early_trial_not_two() -> None:
    """A new bucket tries each other candidate twice back to back, unless the first trial ran it far slower
    (one thread at batch 32): then its next trial waits as usual. A close call still gets its second."""
    for cost, early in (({2: 0.047, 1: 0.067}, 1), ({2: 0.047, 1: 0.050}, 2)):
        clock = Clock()
        tuner = TeamTuner(ThreadTeam(2), clock)
        chosen = blocks(run(tuner, clock, 32, cost, BLOCK * 8))
        assert chosen.count(1) == early, (cost, chosen)


def test_a_bucket_passed_through_briefly_runs_the_whole_team() -> None:
    """A batch shrinking as its requests finish visits each smaller bucket for a few steps: no trial block
    there (a trial starts from a bucket's second block)."""
    clock = Clock()
    tuner = TeamTuner(ThreadTeam(2), clock)
    for requests in (32, 16, 8, 4, 2, 1):
        assert set(run(tuner, clock, requests, {2: 0.02, 1: 0.03}, BLOCK - 1)) == {2}


def test_a_smaller_team_needs_a_margin() -> None:
    clock = Clock()
    tuner = TeamTuner(ThreadTeam(2), clock)
    chosen = blocks(run(tuner, clock, 8, {2: 0.0250, 1: 0.0245}, BLOCK * 80))
    assert chosen[10:].count(2) > 0.8 * len(chosen[10:])


def test_trials_compare_neighbouring_blocks_under_a_changing_load() -> None:
    """Every step gets slower over time (a batch's contexts grow) by far more than the difference between
    the teams: comparing a block with the one next to it still finds the faster team."""

    def cost(size: int, i: int) -> float:
        return (0.020 + 0.00002 * i) * (0.9 if size == 1 else 1.0)

    clock = Clock()
    tuner = TeamTuner(ThreadTeam(2), clock)
    chosen = blocks(run(tuner, clock, 4, cost, BLOCK * 100))
    assert chosen[10:].count(1) > 0.9 * len(chosen[10:])


def test_a_change_of_load_is_followed() -> None:
    clock = Clock()
    tuner = TeamTuner(ThreadTeam(2), clock)
    run(tuner, clock, 2, {1: 0.008, 2: 0.010}, BLOCK * 40)
    assert tuner.snapshot()[2][0] == 1
    after = blocks(run(tuner, clock, 2, {1: 0.012, 2: 0.006}, BLOCK * 200))
    assert after[-20:].count(2) >= 19


def test_slow_steps_and_idle_gaps_do_not_decide() -> None:
    """Every block's first step is 5x slower (a first call, a preemption), and the engine idles 5 s after
    some steps: the faster team still wins."""
    clock = Clock()
    tuner = TeamTuner(ThreadTeam(2), clock)
    chosen: list[int] = []
    for i in range(BLOCK * 80):
        size = tuner.begin(1)
        chosen.append(size)
        period = {1: 0.008, 2: 0.010}[size] * (5 if i % BLOCK == 0 else 1)
        clock.now += period * 0.8
        tuner.end()
        clock.now += period * 0.2 + (5.0 if i % 37 == 0 else 0.0)
    tail = blocks(chosen)[10:]
    assert tail.count(1) > 0.9 * len(tail)


def test_buckets_are_tuned_apart() -> None:
    clock = Clock()
    tuner = TeamTuner(ThreadTeam(2), clock)
    run(tuner, clock, 1, {1: 0.008, 2: 0.010}, BLOCK * 40)
    run(tuner, clock, 8, {1: 0.030, 2: 0.020}, BLOCK * 40)
    assert {k: v[0] for k, v in tuner.snapshot().items()} == {1: 1, 8: 2}


def test_prefill_steps_run_the_whole_team_unmeasured() -> None:
    clock = Clock()
    tuner = TeamTuner(ThreadTeam(2), clock)
    assert run(tuner, clock, 1, {2: 0.05}, 20, prefill=True) == [2] * 20
    assert tuner.snapshot() == {}
