"""Executor: runs one SchedulerOutput on the model (in-process for TP=1, rank workers for TP>1)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from paddlellm.config import EngineConfig
from paddlellm.model_info import ModelInfo
from paddlellm.step_types import ModelRunnerOutput, SchedulerOutput


class Executor(Protocol):
    def execute(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        """Run the scheduled tokens; return one sampled token per request whose chunk reached its end."""
        ...

    def check_health(self) -> None:
        """Raise paddlellm.errors.EngineDead if a worker is gone."""
        ...

    def shutdown(self) -> None: ...

    def warmup(self) -> None:
        """Run dummy prefill and decode batches (--use-warmup), leaving no request state behind."""
        ...

    def prompt_logits(self, token_ids: list[int]) -> np.ndarray:
        """Logits of every prompt position, [len(token_ids), vocab], float32, without touching the KV cache
        of live requests: the scoring path the parity tests (vs transformers, TP=2 vs TP=1) check."""
        ...

    @classmethod
    def kv_memory_bytes(cls, config: EngineConfig, info: ModelInfo) -> int:
        """GPU: the device memory the KV cache may take once the weights are loaded (before construction)."""
        ...
