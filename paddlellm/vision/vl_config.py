"""Qwen2.5-VL checkpoint facts beyond the text decoder's: vision tower, image token ids, M-RoPE sections.

config.json comes in two layouts, both read here: the Hub's flat one (text keys at the top level,
`rope_scaling: {"type": "mrope", "mrope_section": [...]}`) and transformers 5's nested one (`text_config`
with `rope_parameters`). The text backbone is exactly a Qwen2 decoder (q/k/v biases, the same tensor names
`model.layers.*`), so `text_model_info` describes it as the registry's `text_architecture` and
models/decoder.py loads it as is; only its positions differ (M-RoPE, vision/mrope_positions.py).
Stdlib only: the tokenizer and the engine core read it too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from paddlellm.errors import CheckpointError
from paddlellm.model_info import CheckpointText, ModelInfo, VisionInfo, read_json_object
from paddlellm.model_registry import VisionLanguageSpec, arch_spec, vision_language_spec


@dataclass(frozen=True)
class VisionTowerConfig:
    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    out_hidden_size: int  # the text model's hidden size
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    window_size: int  # pixels per attention window side
    fullatt_block_indexes: tuple[int, ...]
    in_channels: int = 3
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6  # transformers hard-codes it for the vision RMSNorms

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size**2


@dataclass(frozen=True)
class VLConfig:
    path: str
    spec: VisionLanguageSpec
    vision: VisionTowerConfig
    image_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int
    # rotary frequency counts rotated by the t, h, w positions (they sum to head_dim / 2)
    mrope_section: tuple[int, ...]
    text_config: dict[str, Any]  # the text decoder's keys, flattened to the top level

    @classmethod
    def from_dir(cls, path: str) -> VLConfig:
        file = os.path.join(path, "config.json")
        cfg = read_json_object(file, required=True)
        archs = cfg.get("architectures")
        if not isinstance(archs, list) or not archs:
            raise CheckpointError(file, "architectures", "missing or empty")
        spec = vision_language_spec(str(archs[0]), file)
        text = _text_keys(cfg)
        vis = cfg.get("vision_config")
        if not isinstance(vis, dict):
            raise CheckpointError(file, "vision_config", "missing or not an object")

        def need(where: dict[str, Any], key: str, field: str, default: Any = None) -> int:
            value = where.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise CheckpointError(file, field, f"missing or not a positive integer: {value!r}")
            return value

        vrope = vis.get("rope_parameters") or {}
        vision = VisionTowerConfig(
            depth=need(vis, "depth", "vision_config.depth"),
            hidden_size=need(vis, "hidden_size", "vision_config.hidden_size"),
            intermediate_size=need(vis, "intermediate_size", "vision_config.intermediate_size"),
            num_heads=need(vis, "num_heads", "vision_config.num_heads"),
            out_hidden_size=need(vis, "out_hidden_size", "vision_config.out_hidden_size"),
            patch_size=need(vis, "patch_size", "vision_config.patch_size", 14),
            temporal_patch_size=need(vis, "temporal_patch_size", "vision_config.temporal_patch_size", 2),
            spatial_merge_size=need(vis, "spatial_merge_size", "vision_config.spatial_merge_size", 2),
            window_size=need(vis, "window_size", "vision_config.window_size", 112),
            fullatt_block_indexes=tuple(vis.get("fullatt_block_indexes", (7, 15, 23, 31))),
            in_channels=need(vis, "in_channels", "vision_config.in_channels", 3),
            rope_theta=float(vrope.get("rope_theta", 10000.0)),
        )
        if vis.get("hidden_act", "silu") != "silu":
            raise CheckpointError(file, "vision_config.hidden_act", f"only silu: {vis.get('hidden_act')!r}")
        if vision.hidden_size % vision.num_heads or vision.head_dim % 4:
            raise CheckpointError(
                file, "vision_config.num_heads", "head_dim must be a multiple of 4 (2-D rotary)"
            )
        if vision.window_size % (vision.patch_size * vision.spatial_merge_size):
            raise CheckpointError(file, "vision_config.window_size", "not a multiple of patch * merge size")
        rope = text.get("rope_scaling") or text.get("rope_parameters") or {}
        section = rope.get("mrope_section")
        head_dim = need(text, "hidden_size", "hidden_size") // need(
            text, "num_attention_heads", "num_attention_heads"
        )
        if not isinstance(section, list) or len(section) != 3 or sum(section) != head_dim // 2:
            raise CheckpointError(
                file,
                "rope_scaling.mrope_section",
                f"need 3 counts summing to head_dim/2={head_dim // 2}: {section!r}",
            )
        return cls(
            path=path,
            spec=spec,
            vision=vision,
            image_token_id=need(cfg, "image_token_id", "image_token_id"),
            vision_start_token_id=need(cfg, "vision_start_token_id", "vision_start_token_id"),
            vision_end_token_id=need(cfg, "vision_end_token_id", "vision_end_token_id"),
            mrope_section=tuple(section),
            text_config=text,
        )

    def text_model_info(self) -> ModelInfo:
        """The text decoder as the Qwen2 architecture it is (see the module docstring)."""
        t, file = self.text_config, os.path.join(self.path, "config.json")
        rope = t.get("rope_scaling") or t.get("rope_parameters") or {}
        heads = t["num_attention_heads"]
        text = CheckpointText.from_dir(self.path, model_config=t)
        if t.get("use_sliding_window"):
            raise CheckpointError(file, "use_sliding_window", "sliding-window attention is not supported")
        return ModelInfo(
            path=self.path,
            architecture=self.spec.text_architecture,
            vocab_size=t["vocab_size"],
            hidden_size=t["hidden_size"],
            intermediate_size=t["intermediate_size"],
            num_layers=t["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=t.get("num_key_value_heads") or heads,
            head_dim=t["hidden_size"] // heads,  # transformers' Qwen2.5-VL ignores a head_dim key
            rms_norm_eps=float(t.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.get("rope_theta", t.get("rope_theta", 1000000.0))),
            rope_scaling=None,  # M-RoPE sections are positions, not a frequency scaling
            max_position_embeddings=t.get("max_position_embeddings", 32768),
            tie_word_embeddings=bool(t.get("tie_word_embeddings", False)),
            attention_bias=arch_spec(self.spec.text_architecture).attention_bias,
            qk_norm=arch_spec(self.spec.text_architecture).qk_norm,
            eos_token_ids=text.eos_token_ids,
            bos_token_id=text.bos_token_id,
            raw_config=t,
            text=text,
            vision=VisionInfo(
                architecture=self.spec.architectures[0],
                image_token_id=self.image_token_id,
                vision_start_token_id=self.vision_start_token_id,
                vision_end_token_id=self.vision_end_token_id,
            ),
        )


def _text_keys(cfg: dict[str, Any]) -> dict[str, Any]:
    """The text decoder's keys: `text_config` (transformers 5) over the top level (the Hub's flat files)."""
    nested = cfg.get("text_config")
    out = {k: v for k, v in cfg.items() if k not in ("text_config", "vision_config")}
    if isinstance(nested, dict):
        out.update(nested)
    return out
