"""ImageProcessorConfig: the Qwen2-VL family's preprocessing rules, read from preprocessor_config.json.

transformers' precedence is kept: top-level `min_pixels` / `max_pixels` win over `size.shortest_edge` /
`size.longest_edge` (older files wrote `size.min_pixels` / `size.max_pixels`), which win over the class
defaults (56*56 and 28*28*1280 pixels). Unknown keys are ignored: the file also carries the processor's
class names and flags for other modalities.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from paddlellm.errors import CheckpointError
from paddlellm.model_info import read_json_object

PREPROCESSOR_FILE = "preprocessor_config.json"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # transformers' OPENAI_CLIP_MEAN / STD: the class defaults
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclass(frozen=True)
class ImageProcessorConfig:
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    rescale_factor: float = 1 / 255
    do_rescale: bool = True
    do_normalize: bool = True
    resample: int = 3  # PIL's resampling filter number (3: bicubic)

    @property
    def factor(self) -> int:
        """Resized sides are multiples of this: one merged token covers factor x factor pixels."""
        return self.patch_size * self.merge_size

    @classmethod
    def from_dir(cls, path: str) -> ImageProcessorConfig:
        file = os.path.join(path, PREPROCESSOR_FILE)
        return cls.from_dict(read_json_object(file, required=True), file)

    @classmethod
    def from_dict(cls, data: dict[str, Any], file: str = PREPROCESSOR_FILE) -> ImageProcessorConfig:
        def number(key: str, value: Any, kind: type = int) -> Any:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise CheckpointError(file, key, f"not a positive number: {value!r}")
            if kind is int and value != int(value):
                raise CheckpointError(file, key, f"not an integer: {value!r}")
            return kind(value)

        def triple(key: str, default: tuple[float, float, float]) -> tuple[float, float, float]:
            value = data.get(key, default)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = [value] * 3
            numbers = isinstance(value, (list, tuple)) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
            )
            if not numbers or len(value) != 3:
                raise CheckpointError(file, key, f"need 3 per-channel numbers: {value!r}")
            if key == "image_std" and min(value) <= 0:  # a divisor
                raise CheckpointError(file, key, f"must be positive: {value!r}")
            return (float(value[0]), float(value[1]), float(value[2]))

        size = data.get("size") or {}
        if not isinstance(size, dict):
            raise CheckpointError(file, "size", f"must be an object: {size!r}")
        lo = data.get("min_pixels", size.get("shortest_edge", size.get("min_pixels", cls.min_pixels)))
        hi = data.get("max_pixels", size.get("longest_edge", size.get("max_pixels", cls.max_pixels)))
        if data.get("do_resize", True) is not True:
            raise CheckpointError(file, "do_resize", "only resizing processors are supported")
        if data.get("do_convert_rgb", True) is not True:
            raise CheckpointError(file, "do_convert_rgb", "only RGB input is supported")
        resample = data.get("resample", cls.resample)
        if resample not in RESAMPLE_NAMES or isinstance(resample, bool):
            raise CheckpointError(file, "resample", f"not a PIL resampling filter: {resample!r}")
        cfg = cls(
            min_pixels=number("min_pixels", lo),
            max_pixels=number("max_pixels", hi),
            patch_size=number("patch_size", data.get("patch_size", cls.patch_size)),
            temporal_patch_size=number(
                "temporal_patch_size", data.get("temporal_patch_size", cls.temporal_patch_size)
            ),
            merge_size=number("merge_size", data.get("merge_size", cls.merge_size)),
            image_mean=triple("image_mean", CLIP_MEAN),
            image_std=triple("image_std", CLIP_STD),
            rescale_factor=number("rescale_factor", data.get("rescale_factor", cls.rescale_factor), float),
            do_rescale=bool(data.get("do_rescale", True)),
            do_normalize=bool(data.get("do_normalize", True)),
            resample=int(resample),
        )
        if cfg.min_pixels > cfg.max_pixels:
            raise CheckpointError(file, "min_pixels", f"{cfg.min_pixels} > max_pixels {cfg.max_pixels}")
        return cfg
