"""M-RoPE rotary rows: cos / sin for 3-D (t, h, w) positions, taken from the 1-D tables.

Qwen2-VL's M-RoPE splits a head's d/2 rotary frequencies into `mrope_section` = (s_t, s_h, s_w) runs: the
first s_t frequencies rotate by the temporal position, the next s_h by the height position, the last s_w by
the width position (both halves of the half-split layout alike). So column j of a token's cos row is the 1-D
table's cos[pos[axis(j)], j]: a gather from the same RotaryTables the 1-D path uses, giving [T, d] rows in
exactly the layout the decoder's rotary (Paddle ops or the native rope_write) already consumes. The decoder
needs no change for it, and a token whose three positions are equal gets bit-for-bit the 1-D row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from paddlellm.layers.rotary import RotaryTables


class MRotaryRows:
    def __init__(self, tables: RotaryTables, mrope_section: Sequence[int]) -> None:
        d = tables.cos.shape[1]
        if len(mrope_section) != 3 or sum(mrope_section) * 2 != d:
            raise ValueError(f"mrope_section {tuple(mrope_section)} must be 3 counts summing to {d // 2}")
        axis = np.repeat(np.arange(3), mrope_section)
        self.axis = np.concatenate([axis, axis])  # [d]: which of t, h, w rotates column j
        self.cols = np.arange(d)
        self.tables = tables

    def rows(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """positions [3, T] -> [T, d] cos and signed sin."""
        pos = np.asarray(positions)[self.axis].T  # [T, d]: the position each column rotates by
        if pos.size and pos.max() >= self.tables.max_positions:
            raise ValueError(
                f"position {int(pos.max())} beyond the rotary table ({self.tables.max_positions})"
            )
        return self.tables.cos[pos, self.cols], self.tables.sin_signed[pos, self.cols]

    def expand(
        self, positions: np.ndarray, heads: int, passthrough: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """[T, heads + passthrough, d], the last `passthrough` heads cos 1 / sin 0 (RotaryTables.expand's
        layout, for the Paddle-ops path)."""
        cos_rows, sin_rows = self.rows(positions)
        t, d = cos_rows.shape
        cos = np.ones((t, heads + passthrough, d), np.float32)
        sin = np.zeros((t, heads + passthrough, d), np.float32)
        cos[:, :heads] = cos_rows[:, None, :]
        sin[:, :heads] = sin_rows[:, None, :]
        return cos, sin
