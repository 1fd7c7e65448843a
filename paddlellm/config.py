"""EngineConfig: the one strict, typed configuration of an engine process, and the one declaration of every
engine option.

Each field is declared once with `option(...)`: type (the annotation), default, help, choices, and how the
launcher's command line shows it. From these declarations the launcher generates its `--flags` and `--help`
(launcher/cli.py) and the llm_engine model's `config.pbtxt` parameters (launcher/render.py), and the engine
parses them back (`EngineConfig.from_params`). Adding an option = one field here + the code that uses it.

Built once per process, either from keyword arguments (offline use, tests) or from the string parameters of
config.pbtxt. Unknown keys and malformed values fail with the key's name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from paddlellm.cpu import KERNEL_ISAS
from paddlellm.errors import ConfigError
from paddlellm.kv_cache_dtype import KV_CACHE_DTYPE_CHOICES
from paddlellm.speculative import DEFAULT_SPECULATIVE_CONFIG, SpeculativeConfig

CPU_KERNEL_CHOICES = ("auto", "native", *KERNEL_ISAS, "paddle")
DTYPE_CHOICES = ("float32", "bfloat16")
QUANTIZATION_CHOICES = ("none", "wint8", "wint4", "auto")


ENGINE_GROUP, SCHEDULER_GROUP = "model and engine", "scheduler"
DEFAULT_MM_LIMIT = '{"image": 4}'
MM_MODALITIES = ("image",)  # what limit_mm_per_prompt may name (video and audio are not served)


@dataclass(frozen=True)
class OptionInfo:
    """How an EngineConfig field is presented: help text, allowed values, its command-line flag."""

    help: str
    choices: tuple[str, ...] = ()
    group: str = ENGINE_GROUP
    cli: bool = True  # False: the launcher declares the flag itself (its default is derived at launch)
    unset: str | None = None  # the flag may be left unset: the field's default applies, --help shows this


def option(default: Any, help: str, **info: Any) -> Any:
    return field(default=default, metadata={"option": OptionInfo(help, **info)})


def option_info(f: dataclasses.Field[Any]) -> OptionInfo:
    return f.metadata["option"]




@dataclass(frozen=True)
class EngineConfig:
    model: str = option(
        "", "checkpoint directory in HF layout, or a llama-architecture .gguf file", cli=False
    )
    served_model_name: str = option(
        "",
        "model name the API reports (default: the checkpoint's directory name); requests may always say "
        "'default'",
        cli=False,
    )
    max_model_len: int = option(2048, "longest prompt + output, in tokens")
    block_size: int = option(64, "tokens per KV-cache block")
    max_num_seqs: int = option(8, "requests running at once (decode batch)")
    max_num_batched_tokens: int = option(
        0,
        "tokens per step (0 = max_model_len); longer prompts are prefilled in chunks",
        unset="max_model_len",
    )
    num_gpu_blocks_override: int = option(
        0, "KV blocks to allocate instead of sizing them from memory (0 = size them)", unset="none"
    )
    gpu_memory_utilization: float = option(
        0.9, "share of device memory (CPU: of cpu_memory_budget_gib) for KV"
    )
    cpu_memory_budget_gib: float = option(2.0, "on CPU: the memory budget the KV cache is sized from")
    kv_cache_ratio: float = option(0.75, "share of KV blocks that admitting new requests may fill")
    tensor_parallel_size: int = option(1, "rank worker processes that split every layer")
    engine_worker_queue_port: int = option(0, "engine <-> rank worker channel port; 0 = pick a free one")
    use_warmup: bool = option(False, "run dummy prefill and decode batches at start-up")
    device: str = option("cpu", "cpu or gpu", choices=("cpu", "gpu"))
    num_threads: int = option(
        0,
        "math threads per rank; 0 = all cores / tensor_parallel_size. Each step runs this many or one fewer "
        "(the core left to the serving path), whichever the engine measured faster for steps of its size "
        "(docs/serving-perf.md)",
    )
    cpu_kernels: str = option(
        "auto",
        "CPU GEMMs, decode attention and RMSNorm: auto (the project's C kernels for the best ISA this CPU "
        "has: avx512_bf16 > avx512 > avx2; else Paddle's ops), native (the same, or fail), avx512_bf16 / "
        "avx512 / avx2 (force that ISA's kernels, e.g. a lower one; fails if the CPU lacks it), or paddle "
        "(Paddle's ops)",
        choices=CPU_KERNEL_CHOICES,
    )
    dtype: str = option(
        "float32",
        "weight precision of the linear layers: float32, or bfloat16 (CPU native kernels, any ISA: half the "
        "weight memory traffic, activations rounded to bf16, fp32 accumulation; vdpbf16ps on AVX512_BF16, "
        "widened to fp32 in registers elsewhere)",
        choices=DTYPE_CHOICES,
    )
    quantization: str = option(
        "auto",
        "quantized weights of every linear layer and the LM head (FastDeploy's names): none; wint8 (8-bit "
        "weights with a scale and a minimum per output column and block of 32 inputs; activations quantized "
        "to int16 per token and block on the fly; integer dot products: vpdpwssd with AVX512-VNNI, vpmaddwd "
        "on AVX2); or wint4 (4-bit weights with a scale and a minimum per block of 32, GGUF Q4_1's math, "
        "int8 activations, the LM head 8-bit; native CPU kernels only); a GGUF's own Q8_0/Q4_0/Q4_1 tensors "
        "run as stored; auto (the default): what the checkpoint's GGUF stored (wint4 for Q4_*, wint8 for "
        "Q8_0), else none, so a checkpoint converted from a quantized GGUF runs its own weights as llama.cpp "
        "does and a full-precision checkpoint stays exact; --dtype bfloat16 makes auto none",
        choices=QUANTIZATION_CHOICES,
    )
    kv_cache_dtype: str = option(
        "auto",
        "precision of the KV cache (vLLM's flag): auto (float16 when the weights run quantized on the native "
        "CPU kernels, as llama.cpp's default cache; else float32, so a full-precision checkpoint stays "
        "exact), "
        "float32, or float16 (native CPU kernels only: half the bytes a decode step reads per cached token)",
        choices=KV_CACHE_DTYPE_CHOICES,
    )
    enforce_eager: bool = option(
        False,
        "run every step layer by layer from Python (vLLM's name); by default a step on the native CPU "
        "kernels runs all layers in one native call (same results, less dispatch)",
    )
    enable_prefix_caching: bool = option(
        True,
        "reuse the KV blocks of a prompt prefix an earlier request computed (a shared system prompt, a "
        "chat's history); only the rest is prefilled. Outputs are bit-identical either way "
        "(docs/prefix-caching.md)",
    )
    speculative_config: str = option(
        DEFAULT_SPECULATIVE_CONFIG,
        "speculative decoding, as a JSON object with vLLM's and FastDeploy's keys: {\"method\": \"ngram\", "
        "\"num_speculative_tokens\": k, \"prompt_lookup_min\": a, \"prompt_lookup_max\": b} (optional "
        "\"disable_by_batch_size\": no drafts while more requests run); drafts copied from the request's own "
        "prompt and output are verified in one step, outputs bit-identical with it off "
        "(docs/speculative-decoding.md); on by default (k 8, lookup 1-4, drafts while one request runs); "
        "'' = off",
        unset="off",
    )
    enable_mm: bool = option(
        False,
        "accept image content parts in chat messages (a vision-language checkpoint, e.g. Qwen2.5-VL; "
        "docs/multimodal.md); refused for a text-only checkpoint",
    )
    limit_mm_per_prompt: str = option(
        DEFAULT_MM_LIMIT,
        "most images one request may carry, vLLM's form: a JSON object {\"image\": n} (or image=n)",
    )
    scheduler_max_size: int = option(
        -1, "most requests waiting in the engine queue; -1 = unbounded", group=SCHEDULER_GROUP
    )
    scheduler_ttl: float = option(
        900.0, "seconds a request may wait before it starts; then it fails", group=SCHEDULER_GROUP
    )
    instance_id: str = option(
        "",
        "suffix for IPC names so instances on one host never collide; '' = pid-based in the engine, random "
        "per launch from the command line",
    )
    seed: int = option(0, "seed for requests that give none (each still gets its own derived seed)")

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
        if self.num_threads < 0:
            raise bad("num_threads", "must be >= 0")
        for f in dataclasses.fields(self):
            choices = option_info(f).choices
            if choices and getattr(self, f.name) not in choices:
                raise bad(f.name, f"must be one of {', '.join(choices)}")
        if self.scheduler_max_size < -1 or self.scheduler_max_size == 0:
            raise bad("scheduler_max_size", "must be -1 (unbounded) or >= 1")
        if self.scheduler_ttl <= 0:
            raise bad("scheduler_ttl", "must be > 0")
        SpeculativeConfig.parse(self.speculative_config)  # fails at start-up, naming the key
        parse_mm_limit(self.limit_mm_per_prompt)  # the same

    @property
    def speculative(self) -> SpeculativeConfig | None:
        """speculative_config parsed (None: off)."""
        return SpeculativeConfig.parse(self.speculative_config)

    @property
    def image_limit(self) -> int:
        """limit_mm_per_prompt's images per request."""
        return parse_mm_limit(self.limit_mm_per_prompt)

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
    def options(cls) -> list[tuple[dataclasses.Field[Any], type, OptionInfo]]:
        """Every option in declaration order: (field, its type, how it is presented)."""
        hints = typing.get_type_hints(cls)
        return [(f, hints[f.name], option_info(f)) for f in dataclasses.fields(cls)]

    def to_params(self) -> dict[str, str]:
        """Every field as the string `from_params` parses back to the same value (config.pbtxt values)."""
        return {f.name: format_value(getattr(self, f.name)) for f in dataclasses.fields(self)}

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


def parse_mm_limit(text: str) -> int:
    """limit_mm_per_prompt -> images per request. vLLM's forms: JSON {"image": n}, or the older image=n."""
    key = "limit_mm_per_prompt"
    raw = text.strip()
    try:
        if raw.startswith("{"):
            limits = json.loads(raw)
            if not isinstance(limits, dict):
                raise ValueError("not a JSON object")
        else:
            limits = dict(item.split("=", 1) for item in raw.split(",") if item.strip())
            limits = {k.strip(): int(v) for k, v in limits.items()}
    except ValueError as e:
        form = '{"image": n} or image=n'
        raise ConfigError(f"config '{key}': expected {form}, got {text!r} ({e})") from None
    unknown = sorted(set(limits) - set(MM_MODALITIES))
    if unknown:
        raise ConfigError(f"config '{key}': only {', '.join(MM_MODALITIES)} can be limited, got {unknown}")
    n = limits.get("image", 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"config '{key}': the image limit must be an integer >= 0, got {n!r}")
    return n


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)
