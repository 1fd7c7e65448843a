"""The launcher's wedged-engine watchdog and restart counter, on synthetic metric pages."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.gateway_metrics import launcher_families
from launcher.restart_counter import CAUSES, RestartCounter
from launcher.watchdog import StepWatchdog, parse_progress


def page(steps: float | None, running: float, waiting: float = 0.0) -> str:
    lines = [
        "# TYPE paddlellm:num_requests_running gauge",
        f'paddlellm:num_requests_running{{model_name="m"}} {running}',
        f'paddlellm:num_requests_waiting{{model_name="m"}} {waiting}',
        'nv_inference_count{model="llm_engine",version="1"} 7',
    ]
    if steps is not None:
        lines += [
            'paddlellm:batch_size_bucket{model_name="m",le="1"} 3',
            f'paddlellm:batch_size_count{{model_name="m"}} {steps}',
            'paddlellm:batch_size_sum{model_name="m"} 12',
        ]
    return "\n".join(lines) + "\n"


def test_parse_progress() -> None:
    assert parse_progress(page(5, 2, 1)) == parse_progress(page(5.0, 1, 2))
    p = parse_progress(page(5, 2, 1))
    assert p is not None and p.steps == 5 and p.in_flight == 3
    assert parse_progress(page(None, 1)).steps == 0  # before the first step is observed
    assert parse_progress("nv_inference_count 1\n") is None  # the engine's families are not there yet


class Pages:
    def __init__(self) -> None:
        self.text: str | None = page(0, 0)

    def __call__(self, url: str) -> str | None:
        return self.text


def test_wedged_only_when_busy_without_steps() -> None:
    pages = Pages()
    dog = StepWatchdog("http://x/metrics", timeout_s=10.0, read=pages)
    assert dog.check(0.0) is None
    pages.text = page(0, 1)  # a request arrives: its first step may take a while
    assert dog.check(5.0) is None
    pages.text = page(1, 1)  # steps advance: never wedged, however long the request runs
    for t in range(6, 60):
        pages.text = page(t, 1)
        assert dog.check(float(t)) is None
    assert dog.check(69.0) is None  # the step counter stopped at 59: 10 s is not more than the timeout
    reason = dog.check(69.5)
    assert reason is not None and "wedged" in reason and "1 request(s)" in reason
    pages.text = None  # an unreadable page says nothing either way
    assert dog.check(100.0) is None
    pages.text = page(59, 0)  # idle with a frozen counter is fine
    assert dog.check(200.0) is None
    pages.text = page(59, 1)
    assert dog.check(205.0) is None and dog.check(210.5) is not None
    dog.reset()  # after a restart the counters start again
    pages.text = page(0, 1)
    assert dog.check(211.0) is None and dog.check(220.0) is None and dog.check(221.5) is not None


def test_restart_counter_file_and_gateway_rendering(tmp_path: Path) -> None:
    path = tmp_path / "launcher.prom"
    counter = RestartCounter(path)
    text = launcher_families(str(path))
    assert "# TYPE paddlellm:engine_restarts_total counter" in text
    for cause in CAUSES:
        assert f'paddlellm:engine_restarts_total{{cause="{cause}"}} 0.0' in text
    counter.inc("engine_wedged")
    counter.inc("engine_wedged")
    counter.inc("rank_died")
    text = launcher_families(str(path))
    assert 'paddlellm:engine_restarts_total{cause="engine_wedged"} 2.0' in text
    assert 'paddlellm:engine_restarts_total{cause="rank_died"} 1.0' in text
    with pytest.raises(ValueError, match="unknown restart cause"):
        counter.inc("bored")
    assert launcher_families(None) == "" and launcher_families(str(tmp_path / "none.prom")) == ""
    assert not list(tmp_path.glob("*.tmp"))
