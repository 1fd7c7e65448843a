"""ArchSpec: what sets each supported architecture apart, declared once.

Every architecture we run is a Llama-shaped decoder: RMSNorm, GQA attention with RoPE, a SwiGLU MLP. They
differ only in load-time facts: which config key turns q/k/v biases on, whether q and k get a per-head
RMSNorm, which RoPE convention the checkpoint's q/k rows follow, the rope scalings it may carry, its tensor
names, transformers' default for tied embeddings, and whether a config key applies a sliding window.
`ModelInfo.from_dir` looks up the spec of config.json's `architectures[0]` and refuses, at start-up, what no
spec or no code covers; the decoder and the rotary layer read the same spec instead of checking names.

Pure data and stdlib: model_info.py (imported by numpy-only engine code) and layers/ both import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from paddlellm.errors import CheckpointError, ConfigError


class UnsupportedModel(CheckpointError, ConfigError):
    """An architecture or config feature we do not run: a start-up ConfigError that, like every
    CheckpointError, names the file and the field."""


# Rope scaling types the rotary layer implements (layers/rotary.py: SCALINGS), with the keys each reads.
# Refused: "dynamic" (NTK scaling recomputed from the sequence length, which one fixed table cannot follow)
# and "yarn" (also scales cos/sin by an attention factor); neither has been checked against transformers.
ROPE_SCALING_PARAMS: Mapping[str, tuple[str, ...]] = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}
ALL_ROPE_SCALINGS = tuple(ROPE_SCALING_PARAMS)


@dataclass(frozen=True)
class WeightNames:
    """Tensor names in the checkpoint. Linear layers are named without `.weight` (their `.bias` is loaded when
    present); per-layer names are relative to `layer.format(i=...)`."""

    embed: str = "model.embed_tokens.weight"
    lm_head: str = "lm_head.weight"
    final_norm: str = "model.norm.weight"
    layer: str = "model.layers.{i}"
    q_proj: str = "self_attn.q_proj"
    k_proj: str = "self_attn.k_proj"
    v_proj: str = "self_attn.v_proj"
    o_proj: str = "self_attn.o_proj"
    q_norm: str = "self_attn.q_norm.weight"
    k_norm: str = "self_attn.k_norm.weight"
    gate_proj: str = "mlp.gate_proj"
    up_proj: str = "mlp.up_proj"
    down_proj: str = "mlp.down_proj"
    input_norm: str = "input_layernorm.weight"
    post_norm: str = "post_attention_layernorm.weight"


LLAMA_WEIGHTS = WeightNames()


@dataclass(frozen=True)
class ArchSpec:
    model_type: str  # config.json's `model_type` (also scripts/make_tiny_model.py's --arch)
    architectures: tuple[str, ...]  # transformers class names accepted in config.json's `architectures`
    qk_norm: bool = False  # per-head RMSNorm on q and k before RoPE
    # True: RoPE rotates adjacent pairs (x0, x1); False: the two halves (x_i, x_{i+d/2}), transformers' Llama.
    interleaved_rope: bool = False
    attention_bias: bool = False  # q/k/v always carry a bias, whatever the config says
    bias_key: str | None = "attention_bias"  # config key that turns q/k/v biases on (None: never)
    tie_default: bool = False  # tie_word_embeddings when config.json omits it (transformers' default)
    # A config key whose non-null value is a sliding attention window on every layer. We run full attention,
    # which equals it only while no sequence is longer than the window.
    sliding_window_key: str | None = None
    rope_scalings: tuple[str, ...] = ALL_ROPE_SCALINGS
    weights: WeightNames = LLAMA_WEIGHTS


ARCHITECTURES: tuple[ArchSpec, ...] = (
    ArchSpec("llama", ("LlamaForCausalLM",)),
    ArchSpec("qwen2", ("Qwen2ForCausalLM",), attention_bias=True),
    ArchSpec("qwen3", ("Qwen3ForCausalLM",), qk_norm=True),
    ArchSpec(
        "ernie4_5", ("Ernie4_5ForCausalLM",), interleaved_rope=True, bias_key="use_bias", tie_default=True
    ),
    ArchSpec("mistral", ("MistralForCausalLM",), bias_key=None, sliding_window_key="sliding_window"),
)


@dataclass(frozen=True)
class VisionLanguageSpec:
    """A vision-language architecture: a registered text decoder plus a vision tower (paddlellm/vision/,
    models/qwen2_5_vl*.py). Not in ARCHITECTURES: the engine serves it only once issue #29 part 2 lands."""

    model_type: str
    architectures: tuple[str, ...]
    text_architecture: str  # the ArchSpec its text decoder is (same tensor names, same forward pass)


VISION_LANGUAGE: tuple[VisionLanguageSpec, ...] = (
    VisionLanguageSpec("qwen2_5_vl", ("Qwen2_5_VLForConditionalGeneration",), "Qwen2ForCausalLM"),
)


def vision_language_spec(architecture: str, file: str = "config.json") -> VisionLanguageSpec:
    for spec in VISION_LANGUAGE:
        if architecture in spec.architectures:
            return spec
    names = ", ".join(a for s in VISION_LANGUAGE for a in s.architectures)
    raise UnsupportedModel(
        file, "architectures", f"'{architecture}' is not a vision-language model we run ({names})"
    )


def supported_architectures() -> tuple[str, ...]:
    return tuple(a for spec in ARCHITECTURES for a in spec.architectures)


def arch_spec(architecture: str, file: str = "config.json") -> ArchSpec:
    """The spec of a transformers class name; UnsupportedModel naming it when none is registered."""
    for spec in ARCHITECTURES:
        if architecture in spec.architectures:
            return spec
    raise UnsupportedModel(
        file,
        "architectures",
        f"'{architecture}' is not supported (supported: {', '.join(supported_architectures())})",
    )


def rope_scaling_type(scaling: Mapping[str, Any] | None) -> Any:
    """The scaling's type as written ("rope_type", or the older "type"); "default" for none."""
    if scaling is None:
        return "default"
    return scaling.get("rope_type", scaling.get("type", "default"))


def check_rope_scaling(spec: ArchSpec, scaling: Mapping[str, Any] | None, file: str) -> None:
    kind = rope_scaling_type(scaling)
    if kind not in spec.rope_scalings:
        raise UnsupportedModel(
            file,
            "rope_scaling",
            f"rope type {kind!r} is not supported for {spec.architectures[0]} "
            f"(supported: {', '.join(spec.rope_scalings)})",
        )
    for key in ROPE_SCALING_PARAMS[kind]:
        value = (scaling or {}).get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise CheckpointError(file, f"rope_scaling.{key}", f"{kind} needs a positive number: {value!r}")


def check_config(spec: ArchSpec, cfg: Mapping[str, Any], file: str, max_len: int, max_len_name: str) -> None:
    """Config features the decoder does not implement, refused at start-up naming the field.

    `max_len` is the longest sequence the engine will run (`max_len_name` says which setting gave it)."""
    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise UnsupportedModel(file, "hidden_act", f"{act!r} is not supported (only silu)")
    if cfg.get("use_sliding_window"):
        raise UnsupportedModel(file, "use_sliding_window", "sliding-window attention is not supported")
    if cfg.get("partial_rotary_factor", 1.0) != 1.0:
        raise UnsupportedModel(file, "partial_rotary_factor", "partial rotary embedding is not supported")
    key = spec.sliding_window_key
    window = cfg.get(key) if key else None
    if key is None or window is None:
        return
    if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
        raise CheckpointError(file, key, f"not a positive integer: {window!r}")
    # transformers masks key j for query i when i - j >= window: full attention equals that while every
    # sequence fits in the window
    if window < max_len:
        raise UnsupportedModel(
            file,
            key,
            f"{window} < {max_len_name} {max_len}: sliding-window attention is not supported "
            f"(run with max_model_len <= {window})",
        )
