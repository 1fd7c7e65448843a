"""ImageInputs: a request's preprocessed images as they cross from the tokenizer model to the engine.

The handoff of issue #29 part 2a to 2b (docs/multimodal.md): all images of a prompt in prompt order, as the
three tensors of paddlellm/protocol (`pixel_values`, `image_grid_thw`, `image_hashes`). numpy only, so the
Triton adapter and (later) the engine core can hold it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from paddlellm.errors import InvalidRequest


class Processed(Protocol):
    """What ImageInputs needs of one preprocessed image (qwen2_vl_processor.ProcessedImage)."""

    pixel_values: np.ndarray
    grid_thw: tuple[int, int, int]


def content_hash(pixel_values: np.ndarray, grid_thw: Sequence[int]) -> str:
    """SHA-256 hex of one image's grid and float32 patch rows: equal for equal embeddings (the vision tower's
    only inputs), so prefix-cache keys may use it; the encoded file's bytes would differ for equal pixels."""
    h = hashlib.sha256(np.asarray(grid_thw, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(pixel_values, dtype=np.float32).tobytes())
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class ImageInputs:
    pixel_values: np.ndarray  # [sum over images of t*h*w, C*T*P*P] float32, images concatenated in order
    grid_thw: np.ndarray  # [images, 3] int64: patches along time, height, width
    hashes: tuple[str, ...]  # content_hash per image

    @classmethod
    def from_processed(cls, images: Sequence[Processed]) -> ImageInputs:
        if not images:
            return cls.empty()
        return cls(
            pixel_values=np.concatenate([im.pixel_values for im in images]).astype(np.float32, copy=False),
            grid_thw=np.asarray([im.grid_thw for im in images], dtype=np.int64).reshape(-1, 3),
            hashes=tuple(content_hash(im.pixel_values, im.grid_thw) for im in images),
        )

    @classmethod
    def empty(cls) -> ImageInputs:
        return cls(np.zeros((0, 0), np.float32), np.zeros((0, 3), np.int64), ())

    @classmethod
    def from_arrays(
        cls, pixel_values: np.ndarray, grid_thw: np.ndarray, hashes: Sequence[str], param: str
    ) -> ImageInputs:
        """Checked: a client may send these tensors straight to llm_engine (InvalidRequest naming `param`)."""
        grid = np.asarray(grid_thw).reshape(-1, 3) if np.asarray(grid_thw).size else np.zeros((0, 3))
        pixels = np.asarray(pixel_values, dtype=np.float32)
        if pixels.ndim != 2:
            raise InvalidRequest(f"pixel_values must be 2-D, got shape {pixels.shape}", param)
        if len(hashes) != len(grid):
            raise InvalidRequest(f"{len(grid)} image grids but {len(hashes)} image hashes", param)
        if (grid <= 0).any():
            raise InvalidRequest("image_grid_thw values must be positive", param)
        patches = int(grid.prod(axis=1).sum())
        if patches != (pixels.shape[0] if len(grid) else 0):
            raise InvalidRequest(
                f"image grids hold {patches} patches, pixel_values {pixels.shape[0]} rows", param
            )
        return cls(pixels, grid.astype(np.int64), tuple(hashes))

    @property
    def num_images(self) -> int:
        return len(self.hashes)

    def __bool__(self) -> bool:
        return self.num_images > 0

    def split(self) -> list[np.ndarray]:
        """pixel_values cut per image (views), in order."""
        ends = np.cumsum(self.grid_thw.prod(axis=1))
        return np.split(self.pixel_values, ends[:-1]) if self.num_images else []

    def tokens_per_image(self, merge_size: int) -> list[int]:
        """Placeholder tokens per image: t*h*w / merge^2."""
        return [int(t * h * w) // merge_size**2 for t, h, w in self.grid_thw]
