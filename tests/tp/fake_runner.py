"""Stand-ins for ModelRunner that exercise the executor, the channel and the all-reduce without a model.

Each rank contributes a partial vector and the all-reduce sums it, so a wrong reduction changes the tokens:
token = sum over ranks of (rank + 1) * (last token + len(history)) mod 1000 = world*(world+1)/2 * (...).
Request ids steer failures: "sleep:<s>" sleeps before the all-reduce, "crash" raises on rank 1.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from paddlellm.executor.rank_messages import Init
from paddlellm.executor.rank_process import serve_rank
from paddlellm.step_types import ModelRunnerOutput, SchedulerOutput


def expected_token(history: list[int], world: int) -> int:
    return (world * (world + 1) // 2 * (history[-1] + len(history))) % 1000


class FakeRunner:
    def __init__(self, config: Any, info: Any, num_blocks: int, rank: int = 0, world: int = 1,
                 all_reduce: Any = None) -> None:
        self.rank, self.world, self.all_reduce = rank, world, all_reduce
        self.history: dict[str, list[int]] = {}

    def execute(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        for rid in sched.finished_request_ids:
            self.history.pop(rid, None)
        for new in sched.new_requests:
            self.history[new.request_id] = list(new.prompt_token_ids) + list(new.output_token_ids)
        for c in sched.cached_requests:
            self.history[c.request_id].extend(c.new_token_ids)
        ids = list(sched.num_scheduled_tokens)
        for rid in ids:
            if rid.startswith("sleep:"):
                time.sleep(float(rid.split(":")[1]))
            if rid == "crash" and self.rank == 1:
                raise RuntimeError("injected failure on rank 1")
        part = np.array([[(self.rank + 1) * (self.history[r][-1] + len(self.history[r]))] for r in ids],
                        dtype=np.float32)
        if self.all_reduce is not None and part.size:
            part = self.all_reduce(part)
        return ModelRunnerOutput({rid: int(part[i, 0]) % 1000 for i, rid in enumerate(ids)})

    def prompt_logits(self, token_ids: list[int]) -> np.ndarray:
        x = np.full((len(token_ids), 4), self.rank + 1, dtype=np.float32)
        return self.all_reduce(x) if self.all_reduce is not None else x


class FailingRunner(FakeRunner):
    """Rank 1 fails while loading, as a bad checkpoint shard would."""

    def __init__(self, config: Any, info: Any, num_blocks: int, rank: int = 0, world: int = 1,
                 all_reduce: Any = None) -> None:
        if rank == 1:
            raise ValueError("shard 1 is broken")
        super().__init__(config, info, num_blocks, rank, world, all_reduce)


def fake_rank_main(init: Init) -> None:
    """A rank process serving FakeRunner through the real worker main (spawn target: module level)."""
    serve_rank(init, FakeRunner)


def failing_rank_main(init: Init) -> None:
    serve_rank(init, FailingRunner)
