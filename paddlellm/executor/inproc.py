"""InprocExecutor: tensor parallel size 1, the ModelRunner in the engine's own process.

It sizes Paddle's math thread pool and picks the device once, at construction (paddle resets OpenMP to one
thread on import); the runner applies the process-level CPU tuning (worker/cpu_tuning.py).
"""

from __future__ import annotations

import os

import numpy as np

from paddlellm.config import EngineConfig
from paddlellm.executor.dist_env import configure_paddle
from paddlellm.model_info import ModelInfo
from paddlellm.step_types import ModelRunnerOutput, SchedulerOutput


class InprocExecutor:
    def __init__(self, config: EngineConfig, info: ModelInfo, num_blocks: int) -> None:
        configure_paddle(config.device, config.threads_per_rank)
        from paddlellm.worker.model_runner import ModelRunner  # lazy: keeps paddle out of importers' path

        self.runner = ModelRunner(config, info, num_blocks)

    def execute(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        return self.runner.execute(sched)

    def check_health(self) -> None:
        """Nothing can die separately from this process."""

    def shutdown(self) -> None:
        self.runner.requests.clear()

    def warmup(self) -> None:
        self.runner.warmup()

    def prompt_logits(self, token_ids: list[int]) -> np.ndarray:
        return self.runner.prompt_logits(token_ids)

    @classmethod
    def kv_memory_bytes(cls, config: EngineConfig, info: ModelInfo) -> int:
        """GPU only: free device memory minus the weights (and 20% for activations and workspace)."""
        import paddle

        total = paddle.device.cuda.get_device_properties(0).total_memory
        weights = sum(
            os.path.getsize(os.path.join(info.path, f))
            for f in os.listdir(info.path)
            if f.endswith(".safetensors")
        )
        return int(total - weights * 1.2)
