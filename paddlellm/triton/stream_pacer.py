"""StreamPacer: the automatic stream interval (`stream_interval` 0, the default).

Every engine response costs the serving path about the same whatever it carries: Triton's two ensemble hops,
a detokenizer execution, the gateway's SSE chunk and the engine's own sender, each a process wake-up
(`bench_stack.py --profile` at 32 streams, 2026-12-07: ~0.9 ms of CPU per response across tritonserver, the
detokenizer stub and the gateway, at 1 to 43 tokens per response alike). On a small CPU the serving processes
take that from the cores the model's math needs: at one token per response the served stack ran at ~75 % of
the engine's offline speed at 32 streams.

Algorithm: count the responses the engine would send at one token each (streaming requests that produced
tokens) per step, and the time between steps; keep an exponential average of that rate, r responses/s.
The interval is k = ceil(r / budget), 1 <= k <= MAX_AUTO_INTERVAL: per token while the rate is within the
budget, and at high rates the fewest tokens per response that keep the serving path within it. A lone
stream is always sent per token (its rate is the step rate, and its reader is the one who sees chunking;
concurrency 1 keeps its inter-token latency). The budget scales with the cores the process may use (spare
cores absorb the serving path), capped because the gateway worker and the detokenizer are single-threaded
whatever the machine. The first token of a request is always sent at once; the adapter flushes held tokens
at the end.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

RESPONSES_PER_CORE_S = 50.0  # ~0.9 ms each: ~5 % of a core (see the module note)
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
        streams, self._outputs = self._outputs, 0
        if self._last_step is not None and now > self._last_step:
            self.rate_per_s += _SMOOTHING * (streams / (now - self._last_step) - self.rate_per_s)
        self._last_step = now
        if streams <= 1:
            self.interval = 1  # a lone stream: per token whatever its rate
            return
        self.interval = min(MAX_AUTO_INTERVAL, max(1, math.ceil(self.rate_per_s / self.budget_per_s)))
