"""The automatic stream interval: per token within the budget, the fewest tokens per response above it."""

from __future__ import annotations

import pytest

from paddlellm.triton.stream_pacer import MAX_AUTO_INTERVAL, MAX_BUDGET_S, StreamPacer, default_budget


def run(pacer: StreamPacer, outputs_per_step: int, step_s: float, steps: int, start: float = 0.0) -> float:
    now = start
    for _ in range(steps):
        pacer.step(now)
        for _ in range(outputs_per_step):
            pacer.output()
        now += step_s
    pacer.step(now)
    return now


@pytest.mark.parametrize(
    ("streams", "step_s", "interval"),
    [
        (1, 0.010, 1),  # one stream at 100 tok/s: per token
        (2, 0.012, 1),  # ~167 responses/s: still within 200
        (8, 0.020, 2),  # 400/s
        (32, 0.065, 3),  # ~492/s
        (64, 0.010, MAX_AUTO_INTERVAL),  # 6,400/s: capped
    ],
)
def test_interval_is_the_fewest_tokens_that_keep_the_rate_in_budget(
    streams: int, step_s: float, interval: int
) -> None:
    pacer = StreamPacer(budget_per_s=200.0)
    run(pacer, streams, step_s, steps=40)
    assert pacer.rate_per_s == pytest.approx(streams / step_s, rel=1e-3)
    assert pacer.interval == interval


def test_idle_and_light_load_bring_it_back_to_per_token() -> None:
    pacer = StreamPacer(budget_per_s=200.0)
    now = run(pacer, 32, 0.05, steps=40)
    assert pacer.interval == 4
    run(pacer, 1, 0.01, steps=20, start=now)  # the burst is over: one stream left
    assert pacer.interval == 1


def test_budget_scales_with_cores_and_is_capped() -> None:
    assert default_budget(1) < default_budget(2) <= MAX_BUDGET_S
    assert default_budget(64) == MAX_BUDGET_S


def test_a_lone_stream_is_sent_per_token_whatever_its_rate() -> None:
    pacer = StreamPacer(budget_per_s=50.0)
    run(pacer, 1, 0.005, steps=40)  # 200 responses/s, four times the budget
    assert pacer.rate_per_s == pytest.approx(200.0, rel=1e-3)
    assert pacer.interval == 1
    run(pacer, 2, 0.005, steps=40, start=1.0)  # a second stream: now the budget counts
    assert pacer.interval == 8
