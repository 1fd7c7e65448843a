"""StreamPacer: the automatic stream interval (`stream_interval` 0, the default).

Every engine response costs the serving path about the same whatever it carries: Triton's two ensemble hops,
a detokenizer execution and the gateway's SSE chunk, each a process wake-up (docs/serving-perf.md measured
~2.7 ms of CPU per response before this, across tritonserver, the detokenizer stub and the gateway). At one
token per response that cost grows with the engine's token rate, and on a small CPU the serving processes
then take cores the model's math needs: the served stack fell to ~75 % of the engine's offline speed at 32
streams, and ~91 % with 4 tokens per response.

Algorithm: count the responses the engine would send at one token each (streaming requests that produced
tokens) per step, and the time between steps; keep an exponential average of that rate, r responses/s.
The interval is k = ceil(r / budget), 1 <= k <= MAX_AUTO_INTERVAL: per token while the rate is within the
budget (one stream, or a few, on any machine: time to first token and inter-token latency are untouched),
and at high rates the fewest tokens per response that keep the serving path within it. The budget scales
with the cores the process may use (spare cores absorb the serving path), capped because the gateway
worker and the detokenizer are single-threaded whatever the machine. The first token of a request is
always sent at once; the adapter flushes held tokens at the end.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

RESPONSES_PER_CORE_S = 100.0  # ~2.7 ms each: ~27 % of a core per 100 responses/s (see the module note)
MAX_BUDGET_S = 400.0  # one gateway worker and one detokenizer instance: single-threaded serving stages
MAX_AUTO_INTERVAL = 16
_SMOOTHING = 0.3  # weight of the newest step in the rate average: a burst is followed within ~3 steps


def default_budget(cores: int | None = None) -> float:
    """Responses per second the serving path may take before tokens are coalesced."""
    n = cores if cores is not None else len(os.sched_getaffinity(0))
    return min(RESPONSES_PER_CORE_S * max(1, n), MAX_BUDGET_S)


@dataclass
class StreamPacer:
    budget_per_s: float = field(default_factory=default_budget)
    interval: int = 1  # tokens per response after the first, for streams on auto
    rate_per_s: float = 0.0  # smoothed responses/s at one token per response
    _outputs: int = 0
    _last_step: float | None = None

    def output(self) -> None:
        """A streaming request produced tokens in the step that just ran."""
        self._outputs += 1

    def step(self, now: float) -> None:
        """Before each engine step: fold the last step's outputs into the rate and choose the interval."""
        if self._last_step is not None and now > self._last_step:
            rate = self._outputs / (now - self._last_step)
            self.rate_per_s += _SMOOTHING * (rate - self.rate_per_s)
        self._last_step = now
        self._outputs = 0
        self.interval = min(MAX_AUTO_INTERVAL, max(1, math.ceil(self.rate_per_s / self.budget_per_s)))
