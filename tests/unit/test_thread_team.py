"""TeamTuner: per bucket of requests per step, the team size with the shortest measured step period runs,
in blocks of consecutive steps; the others are still tried now and then; idle gaps and single slow steps do
not decide; long prefill steps always run the whole team."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from paddlellm.layers.thread_team import (
    BLOCK,
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


def run(
    tuner: TeamTuner,
    clock: Clock,
    requests: int,
    cost: dict[int, float] | Callable[[int, int], float],
    steps: int,
    rows: int | None = None,
) -> list[int]:
    """`steps` back-to-back steps whose period is cost[team size] (or cost(size, step)); the sizes chosen."""
    chosen = []
    for i in range(steps):
        size = tuner.begin(rows or requests, requests)
        assert tuner.team.size == size
        chosen.append(size)
        period = cost(size, i) if callable(cost) else cost[size]
        clock.now += period * 0.8
        tuner.end()
        clock.now += period * 0.2
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
def test_the_faster_team_runs_most_steps_in_blocks(faster: int) -> None:
    clock = Clock()
    tuner = TeamTuner(ThreadTeam(2), clock)
    cost = {faster: 0.010, 3 - faster: 0.013}
    chosen = run(tuner, clock, 1, cost, BLOCK * 60)
    tail = chosen[BLOCK * 8 :]
    share = tail.count(faster) / len(tail)
    assert 1 - 1.5 / EXPLORE_EVERY <= share < 1.0  # the other is still explored
    runs = [chosen[i : i + BLOCK] for i in range(0, len(chosen), BLOCK)]
    assert all(len(set(r)) == 1 for r in runs)  # one team per block
    assert tuner.snapshot()[1][faster] == pytest.approx(cost[faster])


def test_buckets_are_tuned_apart_and_keyed_by_requests() -> None:
    clock = Clock()
    tuner = TeamTuner(ThreadTeam(2), clock)
    # one request whose steps carry 1-9 rows (speculative drafts): one bucket
    small = run(tuner, clock, 1, lambda size, i: 0.008 if size == 1 else 0.010, BLOCK * 40, rows=9)
    large = run(tuner, clock, 8, {1: 0.030, 2: 0.020}, BLOCK * 40)
    assert small[BLOCK * 8 :].count(1) > 0.8 * len(small[BLOCK * 8 :])
    assert large[BLOCK * 8 :].count(2) > 0.8 * len(large[BLOCK * 8 :])
    assert set(tuner.snapshot()) == {1, 8}


def test_a_change_of_load_is_followed() -> None:
    clock = Clock()
    tuner = TeamTuner(ThreadTeam(2), clock)
    run(tuner, clock, 2, {1: 0.008, 2: 0.010}, BLOCK * 30)
    after = run(tuner, clock, 2, {1: 0.012, 2: 0.006}, BLOCK * 60)
    assert after[-BLOCK * 10 :].count(2) > BLOCK * 8


def test_idle_gaps_and_slow_steps_do_not_decide() -> None:
    """Every block of the faster team starts with a step 5x slower (a first call, a preemption) and the
    engine idles 5 s after some steps: the faster team still wins."""
    clock = Clock()
    tuner = TeamTuner(ThreadTeam(2), clock)
    chosen: list[int] = []
    for i in range(BLOCK * 40):
        size = tuner.begin(1, 1)
        chosen.append(size)
        period = {1: 0.008, 2: 0.010}[size] * (5 if i % BLOCK == 0 and size == 1 else 1)
        clock.now += period * 0.8
        tuner.end()
        clock.now += period * 0.2 + (5.0 if i % 37 == 0 else 0.0)
    assert chosen[BLOCK * 8 :].count(1) > 0.8 * len(chosen[BLOCK * 8 :])
    assert tuner.snapshot()[1][1] == pytest.approx(0.008)


def test_long_prefill_steps_run_the_whole_team() -> None:
    clock = Clock()
    tuner = TeamTuner(ThreadTeam(2), clock)
    assert run(tuner, clock, 1, {2: 0.05}, 20, rows=MAX_TUNED_ROWS + 1) == [2] * 20
    assert tuner.snapshot() == {}


def test_exploring_a_much_slower_team_is_rare_but_happens() -> None:
    clock = Clock()
    tuner = TeamTuner(ThreadTeam(2), clock)
    chosen = run(tuner, clock, 32, {2: 0.047, 1: 0.067}, BLOCK * 200)
    tail = chosen[BLOCK * 8 :]
    slow_blocks = tail.count(1) / BLOCK
    assert 1 <= slow_blocks <= len(tail) / BLOCK / 30  # 43 % slower: about one block in 43 (1 % lost)


def test_a_smaller_team_needs_a_margin() -> None:
    """Within MARGIN of each other (noise), the whole team keeps running."""
    clock = Clock()
    tuner = TeamTuner(ThreadTeam(2), clock)
    chosen = run(tuner, clock, 8, {2: 0.0250, 1: 0.0245}, BLOCK * 60)
    tail = chosen[BLOCK * 8 :]
    assert tail.count(2) > 0.8 * len(tail)
