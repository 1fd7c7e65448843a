"""Rotary position embedding (NeoX half-split convention), tables built once in numpy.

The scaling types are those model_registry.py declares (ModelInfo refuses the rest at start-up); `SCALINGS`
implements each. Interleaved-pair checkpoints (`ArchSpec.interleaved_rope`, e.g. ERNIE-4.5) are handled at
load time by permuting each q/k head's rows to the half-split order (models/decoder.py), so one rotation
serves every architecture.

Rotation without slicing: rotate_half(x) * sin == roll(x, d/2) * [-sin_lo, sin_hi], so a step applies
x * cos + roll(x) * sin_signed with cos/sin already expanded to the full [tokens, heads, d] shape (Paddle's
broadcasting elementwise kernels are ~30x slower than same-shape ones on CPU). V heads pass through with
cos 1 / sin 0, so q|k|v is rotated as one tensor without being split first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from paddlellm.model_registry import ROPE_SCALING_PARAMS, UnsupportedModel, rope_scaling_type


def _linear(inv: np.ndarray, scaling: Mapping[str, Any]) -> np.ndarray:
    return (inv / np.float32(scaling["factor"])).astype(np.float32)


def _llama3(inv: np.ndarray, scaling: Mapping[str, Any]) -> np.ndarray:
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


# The scalings model_registry.ROPE_SCALING_PARAMS declares ("default" is no scaling); a unit test keeps the
# two equal, so ModelInfo never accepts a type this file cannot build.
SCALINGS: dict[str, Callable[[np.ndarray, Mapping[str, Any]], np.ndarray]] = {
    "linear": _linear,
    "llama3": _llama3,
}


def inv_frequencies(head_dim: int, theta: float, scaling: Mapping[str, Any] | None) -> np.ndarray:
    """float32 inverse frequencies, as transformers' ROPE_INIT_FUNCTIONS compute them."""
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
    inv = inv.astype(np.float32)
    kind = rope_scaling_type(scaling)
    if kind == "default":
        return inv
    scale = SCALINGS.get(kind)
    if scale is None or scaling is None:  # ModelInfo.from_dir refuses these first; a hand-built info may not
        raise UnsupportedModel(
            "config.json", "rope_scaling",
            f"rope type {kind!r} is not supported (supported: {', '.join(ROPE_SCALING_PARAMS)})",
        )
    return scale(inv, scaling)


class RotaryTables:
    """cos and signed sin per position: [max_positions, head_dim] float32."""

    def __init__(
        self, head_dim: int, theta: float, scaling: Mapping[str, Any] | None, max_positions: int
    ) -> None:
        inv = inv_frequencies(head_dim, theta, scaling)
        pos = np.arange(max_positions, dtype=np.float32)
        freqs = pos[:, None] * inv[None, :]  # float32 product, like the reference
        self.cos = np.concatenate([np.cos(freqs), np.cos(freqs)], axis=1).astype(np.float32)
        sin = np.sin(freqs).astype(np.float32)
        self.sin_signed = np.concatenate([-sin, sin], axis=1)
        self.max_positions = max_positions

    def rows(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[T, d] cos and signed sin for the given token positions (the native rotary reads these)."""
        return self.cos[positions], self.sin_signed[positions]

    def expand(
        self, positions: np.ndarray, heads: int, passthrough: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """[T, heads + passthrough, d] cos and signed sin for the given token positions; the last
        `passthrough` heads get cos 1, sin 0 (exactly unchanged: lets V ride along with q and k)."""
        t, d = len(positions), self.cos.shape[1]
        cos = np.ones((t, heads + passthrough, d), np.float32)
        sin = np.zeros((t, heads + passthrough, d), np.float32)
        cos[:, :heads] = self.cos[positions][:, None, :]
        sin[:, :heads] = self.sin_signed[positions][:, None, :]
        return cos, sin
