"""ModelInfo: the architecture facts of a checkpoint, parsed from its HF-layout config files.

Pure JSON parsing (no paddle): the engine core sizes the KV cache and knows the stop ids from it; the Paddle
model code builds layers from it. A malformed or unsupported checkpoint fails here with the file and field.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from paddlellm.errors import CheckpointError

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Ernie4_5ForCausalLM")


@dataclass(frozen=True)
class ModelInfo:
    path: str  # checkpoint directory
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool  # q/k/v projections carry a bias (Qwen2; Llama/ERNIE when configured)
    qk_norm: bool  # per-head RMSNorm on q and k (Qwen3)
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    raw_config: dict[str, Any]

    def kv_bytes_per_token(self, dtype_bytes: int = 4, tp: int = 1) -> int:
        """K and V, all layers, for the heads one rank holds."""
        return 2 * self.num_layers * (self.num_kv_heads // tp) * self.head_dim * dtype_bytes

    @classmethod
    def from_dir(cls, path: str) -> ModelInfo:
        cfg_file = os.path.join(path, "config.json")
        cfg = _read_json(cfg_file, required=True)
        archs = cfg.get("architectures")
        if not isinstance(archs, list) or not archs:
            raise CheckpointError(cfg_file, "architectures", "missing or empty")
        arch = archs[0]
        if arch not in SUPPORTED_ARCHITECTURES:
            raise CheckpointError(cfg_file, "architectures",
                                  f"'{arch}' is not supported (supported: "
                                  f"{', '.join(SUPPORTED_ARCHITECTURES)})")

        def need(key: str, typ: type | tuple[type, ...], default: Any = None) -> Any:
            value = cfg.get(key, default)
            if value is None or isinstance(value, bool) or not isinstance(value, typ):
                raise CheckpointError(cfg_file, key, f"missing or not {typ}: {value!r}")
            return value

        hidden = need("hidden_size", int)
        heads = need("num_attention_heads", int)
        kv_heads = need("num_key_value_heads", int, heads)
        head_dim = cfg.get("head_dim") or hidden // heads
        if not isinstance(head_dim, int) or head_dim <= 0:
            raise CheckpointError(cfg_file, "head_dim", f"invalid: {head_dim!r}")
        if heads % kv_heads:
            raise CheckpointError(cfg_file, "num_key_value_heads",
                                  f"{kv_heads} does not divide {heads} heads")
        rope_scaling = cfg.get("rope_scaling")
        rope_theta = cfg.get("rope_theta", 10000.0)
        # transformers >= 5 writes `rope_parameters` (theta inside, "default" type for plain RoPE) instead.
        rope_params = cfg.get("rope_parameters")
        if isinstance(rope_params, dict):
            rope_theta = rope_params.get("rope_theta", rope_theta)
            if rope_scaling is None and rope_params.get("rope_type", "default") != "default":
                rope_scaling = rope_params
        if rope_scaling is not None:
            if not isinstance(rope_scaling, dict):
                raise CheckpointError(cfg_file, "rope_scaling", "must be an object or null")
            kind = rope_scaling.get("rope_type", rope_scaling.get("type"))
            if kind not in ("default", "linear", "llama3", "dynamic", "yarn"):
                raise CheckpointError(cfg_file, "rope_scaling", f"rope type {kind!r} is not supported")
        is_qwen2 = arch == "Qwen2ForCausalLM"
        bias = bool(cfg.get("attention_bias", cfg.get("use_bias", is_qwen2))) or is_qwen2

        gen = _read_json(os.path.join(path, "generation_config.json"), required=False)
        eos = gen.get("eos_token_id", cfg.get("eos_token_id"))
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if isinstance(eos, int) else ())
        bos = gen.get("bos_token_id", cfg.get("bos_token_id"))
        return cls(
            path=path,
            architecture=arch,
            vocab_size=need("vocab_size", int),
            hidden_size=hidden,
            intermediate_size=need("intermediate_size", int),
            num_layers=need("num_hidden_layers", int),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=float(need("rms_norm_eps", (int, float), 1e-6)),
            rope_theta=_theta(cfg_file, rope_theta),
            rope_scaling=rope_scaling,
            max_position_embeddings=need("max_position_embeddings", int, 4096),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bias,
            qk_norm=arch == "Qwen3ForCausalLM",
            eos_token_ids=eos_ids,
            bos_token_id=bos if isinstance(bos, int) else None,
            raw_config=cfg,
        )


def resolve_checkpoint(path: str) -> str:
    """A checkpoint directory, converting a .gguf file once into `<file>.hf/` beside it."""
    if os.path.isdir(path):
        return path
    if path.endswith(".gguf") and os.path.isfile(path):
        out = path + ".hf"
        if not os.path.isfile(os.path.join(out, "config.json")):
            from paddlellm.tools.convert_gguf import convert  # lazy: only .gguf users need gguf

            convert(path, out)
        return out
    raise CheckpointError(path, "path", "not a checkpoint directory or a .gguf file")


def _theta(cfg_file: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CheckpointError(cfg_file, "rope_theta", f"not a number: {value!r}")
    return float(value)


def _read_json(file: str, required: bool) -> dict[str, Any]:
    if not os.path.isfile(file):
        if required:
            raise CheckpointError(file, "(file)", "not found")
        return {}
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(file, "(file)", f"unreadable JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(file, "(file)", "top level must be a JSON object")
    return data
