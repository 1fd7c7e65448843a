"""The one place that sets up a rank process's environment: math threads and paddle.distributed.

A rank calls `apply_rank_env` first thing (before paddle is imported: MKL and OpenMP read their variables
once), then `configure_paddle`, and on GPU `init_distributed` for NCCL. The executor never sets these in its
own process, so an engine's environment is left as the launcher gave it.
"""

from __future__ import annotations

import os

from paddlellm.errors import ConfigError
from paddlellm.model_info import ModelInfo


def check_tp_divisible(info: ModelInfo, tp: int) -> None:
    """Every rank must hold whole heads: heads and KV heads both divisible by tp (no KV-head replication)."""
    if tp == 1:
        return
    if info.num_heads % tp or info.num_kv_heads % tp:
        kv = info.num_kv_heads
        ok = [n for n in range(1, kv + 1) if info.num_heads % n == 0 and kv % n == 0]
        raise ConfigError(
            f"config 'tensor_parallel_size': {tp} does not divide the model's attention heads "
            f"(num_attention_heads={info.num_heads}, num_key_value_heads={info.num_kv_heads}) "
            f"in {info.path}; valid sizes for this model: {', '.join(map(str, ok))}"
        )
    if info.intermediate_size % tp:
        raise ConfigError(
            f"config 'tensor_parallel_size': {tp} does not divide the model's intermediate_size "
            f"({info.intermediate_size}) in {info.path}"
        )



def rank_env(rank: int, world: int, endpoints: list[str], device: str) -> dict[str, str]:
    """Environment variables of rank `rank` (pure; `apply_rank_env` installs them). No OMP/MKL_NUM_THREADS:
    paddle resets OpenMP on import and warns about them; configure_paddle sizes the pool instead."""
    env = {
        "PADDLE_TRAINER_ID": str(rank),
        "PADDLE_TRAINERS_NUM": str(world),
        "PADDLE_RANK_IN_NODE": str(rank),
        "PADDLE_LOCAL_SIZE": str(world),
    }
    if endpoints:
        env |= {
            "PADDLE_TRAINER_ENDPOINTS": ",".join(endpoints),
            "PADDLE_CURRENT_ENDPOINT": endpoints[rank],
            "PADDLE_MASTER": endpoints[0],
        }
    if device == "gpu":
        env |= {"FLAGS_selected_gpus": str(rank), "PADDLE_LOCAL_DEVICE_IDS": str(rank),
                "PADDLE_WORLD_DEVICE_IDS": ",".join(map(str, range(world))), "PADDLE_DISTRI_BACKEND": "nccl"}
    else:
        env |= {"PADDLE_DISTRI_BACKEND": "gloo", "CUDA_VISIBLE_DEVICES": ""}
    return env


def apply_rank_env(rank: int, world: int, endpoints: list[str], device: str) -> None:
    os.environ.update(rank_env(rank, world, endpoints, device))


def configure_paddle(device: str, threads: int, rank: int = 0) -> None:
    import paddle

    paddle.set_device(f"gpu:{rank}" if device == "gpu" else "cpu")
    # paddle sets OMP_NUM_THREADS=1 on import; the math library's pool must be sized explicitly.
    paddle.base.core.set_num_threads(threads)


def init_distributed() -> None:
    """paddle.distributed's process group: NCCL on GPU; gloo on CPU, used only by the benchmark (the backend
    comes from PADDLE_DISTRI_BACKEND, which apply_rank_env set)."""
    import paddle.distributed as dist

    dist.init_parallel_env()
