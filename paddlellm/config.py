"""EngineConfig: the one strict, typed configuration of an engine process.

Built once per process, either from keyword arguments (offline use, tests) or from the string parameters that
the launcher renders into the llm_engine model's config.pbtxt (`EngineConfig.from_params`). Unknown keys and
malformed values fail with the key's name; the field help strings also feed the launcher's `--help`.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from paddlellm.cpu import KERNEL_ISAS
from paddlellm.errors import ConfigError

CPU_KERNEL_CHOICES = ("auto", "native", *KERNEL_ISAS, "paddle")
DTYPE_CHOICES = ("float32", "bfloat16")


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class EngineConfig:
    model: str = _f("", "checkpoint directory in HF layout, or a llama-architecture .gguf file")
    served_model_name: str = _f("", "model name the API reports; '' = the checkpoint's directory name")
    max_model_len: int = _f(2048, "longest prompt + output, in tokens")
    block_size: int = _f(64, "tokens per KV-cache block")
    max_num_seqs: int = _f(8, "requests running at once (decode batch)")
    max_num_batched_tokens: int = _f(0, "tokens per step; 0 = max_model_len; longer prompts are chunked")
    num_gpu_blocks_override: int = _f(0, "KV blocks to allocate; 0 = size them from memory")
    gpu_memory_utilization: float = _f(0.9, "share of device memory (CPU: of cpu_memory_budget_gib) for KV")
    cpu_memory_budget_gib: float = _f(2.0, "on CPU: the memory budget the KV cache is sized from")
    kv_cache_ratio: float = _f(0.75, "share of KV blocks that admitting new requests may fill")
    tensor_parallel_size: int = _f(1, "rank worker processes that split every layer")
    engine_worker_queue_port: int = _f(0, "engine <-> rank worker channel port; 0 = pick a free one")
    use_warmup: bool = _f(False, "run dummy prefill and decode batches at start-up")
    device: str = _f("cpu", "cpu or gpu")
    num_threads: int = _f(0, "math threads per rank; 0 = all cores / tensor_parallel_size")
    cpu_kernels: str = _f(
        "auto",
        "CPU GEMMs, decode attention and RMSNorm: auto (the project's C kernels for the best ISA this CPU "
        "has: avx512_bf16 > avx512 > avx2; else Paddle's ops), native (the same, or fail), avx512_bf16 / "
        "avx512 / avx2 (force that ISA's kernels, e.g. a lower one; fails if the CPU lacks it), or paddle "
        "(Paddle's ops)",
    )
    dtype: str = _f(
        "float32",
        "weight precision of the linear layers: float32, or bfloat16 (CPU native kernels, any ISA: half the "
        "weight memory traffic, activations rounded to bf16, fp32 accumulation; vdpbf16ps on AVX512_BF16, "
        "widened to fp32 in registers elsewhere)",
    )
    scheduler_max_size: int = _f(-1, "most requests waiting in the engine queue; -1 = unbounded")
    scheduler_ttl: float = _f(900.0, "seconds a request may wait before it starts; then it fails")
    instance_id: str = _f("", "suffix for IPC names so instances on one host never collide; '' = pid-based")
    seed: int = _f(0, "seed for requests that give none (each still gets its own derived seed)")

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"config '{name}': {why} (got {getattr(self, name)!r})")

        if self.max_model_len < 2:
            raise bad("max_model_len", "must be >= 2")
        if self.block_size < 1 or self.block_size > 4096:
            raise bad("block_size", "must be in [1, 4096]")
        if self.max_num_seqs < 1:
            raise bad("max_num_seqs", "must be >= 1")
        if self.max_num_batched_tokens < 0:
            raise bad("max_num_batched_tokens", "must be >= 0")
        if self.num_gpu_blocks_override < 0:
            raise bad("num_gpu_blocks_override", "must be >= 0")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise bad("gpu_memory_utilization", "must be in (0, 1]")
        if self.cpu_memory_budget_gib <= 0:
            raise bad("cpu_memory_budget_gib", "must be > 0")
        if not 0.0 < self.kv_cache_ratio <= 1.0:
            raise bad("kv_cache_ratio", "must be in (0, 1]")
        if self.tensor_parallel_size < 1:
            raise bad("tensor_parallel_size", "must be >= 1")
        if not 0 <= self.engine_worker_queue_port <= 65535:
            raise bad("engine_worker_queue_port", "must be a port number or 0")
        if self.device not in ("cpu", "gpu"):
            raise bad("device", "must be 'cpu' or 'gpu'")
        if self.num_threads < 0:
            raise bad("num_threads", "must be >= 0")
        if self.cpu_kernels not in CPU_KERNEL_CHOICES:
            raise bad("cpu_kernels", f"must be one of {', '.join(CPU_KERNEL_CHOICES)}")
        if self.dtype not in DTYPE_CHOICES:
            raise bad("dtype", f"must be one of {', '.join(DTYPE_CHOICES)}")
        if self.scheduler_max_size < -1 or self.scheduler_max_size == 0:
            raise bad("scheduler_max_size", "must be -1 (unbounded) or >= 1")
        if self.scheduler_ttl <= 0:
            raise bad("scheduler_ttl", "must be > 0")

    # Derived values, so no caller re-implements the defaults.
    @property
    def batched_tokens(self) -> int:
        return self.max_num_batched_tokens or self.max_model_len

    @property
    def threads_per_rank(self) -> int:
        return self.num_threads or max(1, (os.cpu_count() or 1) // self.tensor_parallel_size)

    @property
    def ipc_suffix(self) -> str:
        return self.instance_id or f"{os.getpid()}"

    def replace(self, **changes: Any) -> EngineConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def help_items(cls) -> list[tuple[str, Any, str]]:
        return [(f.name, f.default, f.metadata["help"]) for f in dataclasses.fields(cls)]

    @classmethod
    def from_params(cls, params: dict[str, str]) -> EngineConfig:
        """Parse string parameters strictly: unknown keys and malformed values name the key."""
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ConfigError(f"unknown engine config key(s): {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for key, raw in params.items():
            values[key] = _parse_value(key, raw, hints[key])
        return cls(**values)


def _parse_value(key: str, raw: str, typ: Any) -> Any:
    if not isinstance(raw, str):
        raise ConfigError(f"config '{key}': expected a string parameter, got {type(raw).__name__}")
    text = raw.strip()
    if isinstance(typ, types.UnionType):  # e.g. int | None; not used today but keep parsing strict
        raise ConfigError(f"config '{key}': unsupported type {typ}")
    try:
        if typ is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected a boolean (0/1/true/false)")
        if typ is int:
            return int(text)
        if typ is float:
            return float(text)
        return raw
    except ValueError as e:
        raise ConfigError(f"config '{key}': cannot parse {raw!r}: {e}") from None
