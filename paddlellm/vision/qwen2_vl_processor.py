"""The Qwen2-VL / Qwen2.5-VL image processor: RGB image -> pixel_values [patches, C*T*P*P] and grid (t, h, w).

Algorithm (transformers' slow PIL processor, step for step, so the floats are identical):
1. smart resize: both sides rounded to multiples of factor = patch * merge; if the area leaves
   [min_pixels, max_pixels], both sides are scaled by the same beta and floored (too large) or ceiled (too
   small) to multiples of factor;
2. PIL resize of the uint8 RGB image with the checkpoint's filter (bicubic by default);
3. rescale (uint8 -> float64 * factor -> float32), then (x - mean) / std per channel in float32;
4. patchify: the image is repeated temporal_patch_size times (a still image is a clip of identical frames),
   and patches are ordered merge-block-major: for each (merge_size x merge_size) block of patches, row-major,
   its patches row-major, so the merger's 4 (for merge 2) neighbours are consecutive rows. Each row is the
   patch's (C, T, P, P) values flattened, the order the vision tower's patch-embedding weight expects.
One image gives grid (1, H/P, W/P) and t*h*w / merge^2 placeholder tokens in the prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from paddlellm.errors import InvalidRequest
from paddlellm.vision.image_config import ImageProcessorConfig

MAX_ASPECT = 200  # transformers refuses longer / shorter sides beyond this ratio


@dataclass(frozen=True)
class ProcessedImage:
    pixel_values: np.ndarray  # [t * h * w, C * T * P * P] float32
    grid_thw: tuple[int, int, int]  # patches along time, height, width
    num_tokens: int  # placeholder tokens this image takes in the prompt: t * h * w / merge^2


def smart_resize(
    height: int, width: int, cfg: ImageProcessorConfig, param: str = "messages"
) -> tuple[int, int]:
    """(height, width) after resizing: multiples of cfg.factor with an area within the pixel bounds."""
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise InvalidRequest(f"image aspect ratio of {width}x{height} exceeds {MAX_ASPECT}:1", param=param)
    factor = cfg.factor
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > cfg.max_pixels:
        beta = math.sqrt(height * width / cfg.max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < cfg.min_pixels:
        beta = math.sqrt(cfg.min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def num_image_tokens(height: int, width: int, cfg: ImageProcessorConfig) -> int:
    """Placeholder tokens of an image of this size, without touching its pixels."""
    h, w = smart_resize(height, width, cfg)
    return (h // cfg.patch_size) * (w // cfg.patch_size) // (cfg.merge_size**2)


def preprocess_image(
    image: Image.Image, cfg: ImageProcessorConfig, param: str = "messages"
) -> ProcessedImage:
    """One RGB image (image_decode.decode_image's output) -> its patches and grid."""
    if image.mode != "RGB":
        raise ValueError(f"preprocess_image wants an RGB image, got mode {image.mode}")  # decode_image's job
    width, height = image.size
    h, w = smart_resize(height, width, cfg, param)
    resized = image.resize((w, h), resample=Image.Resampling(cfg.resample))
    x = np.asarray(resized).transpose(2, 0, 1)  # [C, H, W] uint8
    if cfg.do_rescale:
        x = (x.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    else:
        x = x.astype(np.float32)
    if cfg.do_normalize:
        mean = np.asarray(cfg.image_mean, dtype=np.float32)[:, None, None]
        std = np.asarray(cfg.image_std, dtype=np.float32)[:, None, None]
        x = (x - mean) / std
    return ProcessedImage(*patchify(x, cfg))


def patchify(x: np.ndarray, cfg: ImageProcessorConfig) -> tuple[np.ndarray, tuple[int, int, int], int]:
    """[C, H, W] float32 (H, W multiples of cfg.factor) -> (pixel_values, grid_thw, num_tokens)."""
    c, height, width = x.shape
    p, m, t = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    gh, gw = height // p, width // p
    blocks = x.reshape(c, gh // m, m, p, gw // m, m, p)
    # (block row, block col, row in block, col in block, C, P, P)
    blocks = blocks.transpose(1, 4, 2, 5, 0, 3, 6)
    frames = np.broadcast_to(blocks[:, :, :, :, :, None], (*blocks.shape[:5], t, p, p))
    pixel_values = np.ascontiguousarray(frames.reshape(gh * gw, c * t * p * p), dtype=np.float32)
    return pixel_values, (1, gh, gw), gh * gw // (m * m)
