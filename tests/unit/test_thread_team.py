"""TeamTuner: per step-size bucket, the team size with the shortest measured step period wins, the others
are still tried now and then, idle gaps are not charged, and large steps always run the whole team."""

from __future__ import annotations

import pytest

from paddlellm.layers.thread_team import (
    EXPLORE_EVERY,
    MAX_TUNED_ROWS,
    TeamTuner,
    ThreadTeam,
    team_of,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(tuner: TeamTuner, clock: Clock, rows: int, cost: dict[int, float], steps: int) -> list[int]:
    """`steps` back-to-back steps whose period is cost[team size]; the sizes chosen."""
    chosen = []
    for _ in range(steps):
        size = tuner.begin(rows)
        assert tuner.team.size == size
        chosen.append(size)
        clock.now += cost[size] * 0.8
        tuner.end()
        clock.now += cost[size] * 0.2
    return chosen


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
def test_the_faster_team_runs_most_steps(faster: int) -> None:
    clock = Clock()
    tuner = TeamTuner(ThreadTeam(2), clock)
    cost = {faster: 0.010, 3 - faster: 0.013}
    chosen = run(tuner, clock, 1, cost, 400)
    tail = chosen[100:]
    share = tail.count(faster) / len(tail)
    assert 1 - 2 / EXPLORE_EVERY <= share < 1.0  # the other is still explored
    assert tuner.snapshot()[1][faster] == pytest.approx(cost[faster])


def test_buckets_are_tuned_apart() -> None:
    clock = Clock()
    tuner = TeamTuner(ThreadTeam(2), clock)
    small = run(tuner, clock, 1, {1: 0.008, 2: 0.010}, 200)
    large = run(tuner, clock, 8, {1: 0.030, 2: 0.020}, 200)
    assert small[100:].count(1) > 180 // 2 and large[100:].count(2) > 180 // 2
    assert set(tuner.snapshot()) == {1, 8}


def test_a_change_of_load_is_followed() -> None:
    clock = Clock()
    tuner = TeamTuner(ThreadTeam(2), clock)
    run(tuner, clock, 2, {1: 0.008, 2: 0.010}, 300)
    after = run(tuner, clock, 2, {1: 0.012, 2: 0.006}, 2000)
    assert after[-200:].count(2) > 190


def test_idle_gaps_are_not_charged() -> None:
    clock = Clock()
    tuner = TeamTuner(ThreadTeam(2), clock)
    run(tuner, clock, 1, {1: 0.010, 2: 0.010}, 40)
    before = tuner.snapshot()[1]
    tuner.begin(1)
    clock.now += 0.01
    tuner.end()
    clock.now += 5.0  # the engine idled: no requests
    tuner.begin(1)
    assert tuner.snapshot()[1] == before


def test_large_steps_run_the_whole_team() -> None:
    clock = Clock()
    tuner = TeamTuner(ThreadTeam(2), clock)
    assert run(tuner, clock, MAX_TUNED_ROWS + 1, {2: 0.05}, 20) == [2] * 20
    assert tuner.snapshot() == {}


def test_one_slow_step_does_not_decide() -> None:
    """A first call (or a step preempted by another process) 4x slower must not make its team look slower."""
    clock = Clock()
    tuner = TeamTuner(ThreadTeam(2), clock)
    first = tuner.begin(1)
    clock.now += 0.035
    tuner.end()
    chosen = run(tuner, clock, 1, {first: 0.008, 3 - first: 0.010}, 200)
    assert chosen[50:].count(first) > 140
