"""How many KV-cache blocks an engine gets: an explicit override, or a share of a memory budget."""

from __future__ import annotations

from paddlellm.config import EngineConfig
from paddlellm.cpu import read_cpu
from paddlellm.errors import ConfigError
from paddlellm.kv_cache_dtype import kv_value_bytes, resolve_kv_cache_dtype
from paddlellm.model_info import ModelInfo
from paddlellm.quant_blocks import resolved_quantization

_GIB = 1 << 30


def expected_kv_value_bytes(config: EngineConfig, info: ModelInfo) -> int:
    """Bytes per cached K/V value the runner will allocate (kv_cache_dtype.py), predicted before it loads:
    native kernels are expected on CPU unless cpu_kernels is paddle or the CPU has no kernel ISA (a library
    that then fails to load runs the Paddle path on a float32 cache of the same block count)."""
    quant = resolved_quantization(config.quantization, config.dtype, info.path)  # as the runner does
    native = config.device == "cpu" and config.cpu_kernels != "paddle"
    native = native and read_cpu().best_kernel_isa is not None
    try:
        return kv_value_bytes(resolve_kv_cache_dtype(config.kv_cache_dtype, quant, native))
    except ConfigError:
        return 4  # float16 without native kernels: the runner refuses it with this error


def block_bytes(config: EngineConfig, info: ModelInfo, dtype_bytes: int = 4) -> int:
    """Bytes one block takes on one rank (K and V, all layers, that rank's KV heads)."""
    return config.block_size * info.kv_bytes_per_token(
        dtype_bytes=dtype_bytes, tp=config.tensor_parallel_size
    )


def num_kv_blocks(
    config: EngineConfig, info: ModelInfo, device_memory_bytes: int | None = None, dtype_bytes: int = 4
) -> int:
    """num_gpu_blocks_override if set, else gpu_memory_utilization x budget / block bytes.

    The budget is `device_memory_bytes` on GPU (the memory the executor measured as available for the KV
    cache on one rank) and `cpu_memory_budget_gib` on CPU.
    """
    if config.num_gpu_blocks_override:
        return config.num_gpu_blocks_override
    if config.device == "gpu":
        if device_memory_bytes is None or device_memory_bytes <= 0:
            raise ConfigError(
                "config 'device': gpu needs the executor's measured device memory to size the "
                "KV cache (or set num_gpu_blocks_override)"
            )
        budget = float(device_memory_bytes)
    else:
        budget = config.cpu_memory_budget_gib * _GIB
    per_block = block_bytes(config, info, dtype_bytes)
    n = int(config.gpu_memory_utilization * budget // per_block)
    if n < 1:
        raise ConfigError(
            f"config 'gpu_memory_utilization': {config.gpu_memory_utilization} of "
            f"{budget / _GIB:.3f} GiB holds no KV block of {per_block} bytes"
        )
    return n
