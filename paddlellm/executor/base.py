"""Executor: runs one SchedulerOutput on the model (in-process for TP=1, rank workers for TP>1)."""

from __future__ import annotations

from typing import Protocol

from paddlellm.engine.outputs import ModelRunnerOutput, SchedulerOutput


class Executor(Protocol):
    def execute(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        """Run the scheduled tokens; return one sampled token per request whose chunk reached its end."""
        ...

    def check_health(self) -> None:
        """Raise paddlellm.errors.EngineDead if a worker is gone."""
        ...

    def shutdown(self) -> None: ...
